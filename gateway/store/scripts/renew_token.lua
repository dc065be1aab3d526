-- Issue a new token digest: beside the old one ('later': both work until finish or
-- undo) or in its place ('now'); with its one-time link if any.
-- KEYS: key hash, audit stream, the six listing indexes (key_rules.lua), [new link]
-- ARGV: header (prelude.lua), now, 'later' | 'now', digest, link value, link ttl ms,
--       link expiry, appKey
-- Not yet in KEYS: the previous link, dropped (named in the hash).
-- Answers {'ok', the hash after}, or {'missing'} | {'changed'} | {'pending'} | {'link'}.
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if redis.call('HEXISTS', KEYS[1], 'newTok') == 1 then return {'pending'} end
local link_exp = redis.call('HGET', KEYS[1], 'linkExp')
if link_exp and tonumber(link_exp) > tonumber(ARGV[7]) then return {'link'} end
local before = snap(KEYS[1], ARGV[1])
if ARGV[8] == 'later' then
  redis.call('HSET', KEYS[1], 'newTok', ARGV[9], 'newTokCreated', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'tok', ARGV[9], 'tokCreated', ARGV[7])
end
local old_link = redis.call('HGET', KEYS[1], 'link')
if old_link then redis.call('DEL', old_link) end
redis.call('HDEL', KEYS[1], 'link', 'linkExp')
if KEYS[9] then
  redis.call('SET', KEYS[9], ARGV[10], 'PX', ARGV[11])
  redis.call('HSET', KEYS[1], 'link', KEYS[9], 'linkExp', ARGV[12])
end
list(listing_at(3), KEYS[1], ARGV[13], ARGV[1])
committed(KEYS[1], KEYS[2], before, snap(KEYS[1], ARGV[1]))
return {'ok', redis.call('HGETALL', KEYS[1])}
