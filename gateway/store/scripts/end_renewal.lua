-- Finish (the old token stops) or undo (the new token is dropped) a pending renewal.
-- KEYS: key hash, audit stream, the six listing indexes (key_rules.lua)
-- ARGV: header (prelude.lua), 'finish' | 'undo', appKey
-- Answers {'ok', the hash after, the name of an unopened link of a dropped new token or
-- ''} (the caller deletes that link), or {'missing'} | {'changed'} | {'none'}.
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
local new = redis.call('HMGET', KEYS[1], 'newTok', 'newTokCreated')
if not new[1] then return {'none'} end
local before = snap(KEYS[1], ARGV[1])
local idx = listing_at(3)
unlist(idx, KEYS[1], ARGV[8], ARGV[1])
local dropped_link = ''
if ARGV[7] == 'finish' then
  keep_created(KEYS[1])
  redis.call('HSET', KEYS[1], 'tok', new[1], 'tokCreated', new[2])
else
  -- the new token is dropped, so is an unopened link that would reveal it
  dropped_link = redis.call('HGET', KEYS[1], 'link') or ''
  redis.call('HDEL', KEYS[1], 'link', 'linkExp')
end
redis.call('HDEL', KEYS[1], 'newTok', 'newTokCreated')
list(idx, KEYS[1], ARGV[8], ARGV[1])
committed(KEYS[1], KEYS[2], before, snap(KEYS[1], ARGV[1]))
return {'ok', redis.call('HGETALL', KEYS[1]), dropped_link}
