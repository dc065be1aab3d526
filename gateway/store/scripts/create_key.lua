-- Store a new generated key, with its one-time link if any.
-- KEYS: key hash, account's keys index, audit stream, owners set, [link]
-- ARGV: header (prelude.lua), now, appKey, link value, link ttl ms, link expiry,
--       then field, value, ... of the hash (from ARGV[12])
-- Answers 'taken' when the name was ever used (a tombstone keeps deleted names), else 'ok'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'taken' end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SADD', KEYS[4], '') end
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
if KEYS[5] then
  redis.call('SET', KEYS[5], ARGV[9], 'PX', ARGV[10])
  redis.call('HSET', KEYS[1], 'link', KEYS[5], 'linkExp', ARGV[11])
end
if holds_owner(redis.call('HGET', KEYS[1], 'status'), roles_of(KEYS[1], ARGV[1])) then
  redis.call('SADD', KEYS[4], ARGV[8])
end
committed(KEYS[1], KEYS[3], {}, snap(KEYS[1], ARGV[1]))
return 'ok'
