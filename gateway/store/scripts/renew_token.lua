-- Issue a new token digest: beside the old one ('later': both work until finish or
-- undo) or in its place ('now'); with the name of its one-time link if any (written by
-- the caller first, as for create_key.lua).
-- KEYS: key hash, audit stream, the six listing indexes (key_rules.lua)
-- ARGV: header (prelude.lua), now, 'later' | 'now', digest, link name or '',
--       link expiry, appKey
-- Answers {'ok', the hash after, the previous link's name or ''} (the caller deletes
-- that link: it has a slot of its own), or {'missing'} | {'changed'} | {'pending'} |
-- {'link'}.
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if redis.call('HEXISTS', KEYS[1], 'newTok') == 1 then return {'pending'} end
local link_exp = redis.call('HGET', KEYS[1], 'linkExp')
if link_exp and tonumber(link_exp) > tonumber(ARGV[7]) then return {'link'} end
local before = snap(KEYS[1], ARGV[1])
local idx = listing_at(3)
unlist(idx, KEYS[1], ARGV[12], ARGV[1])
if ARGV[8] == 'later' then
  redis.call('HSET', KEYS[1], 'newTok', ARGV[9], 'newTokCreated', ARGV[7])
else
  keep_created(KEYS[1])
  redis.call('HSET', KEYS[1], 'tok', ARGV[9], 'tokCreated', ARGV[7])
end
local old_link = redis.call('HGET', KEYS[1], 'link') or ''
redis.call('HDEL', KEYS[1], 'link', 'linkExp')
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'link', ARGV[10], 'linkExp', ARGV[11])
end
list(idx, KEYS[1], ARGV[12], ARGV[1])
committed(KEYS[1], KEYS[2], before, snap(KEYS[1], ARGV[1]))
return {'ok', redis.call('HGETALL', KEYS[1]), old_link}
