-- Remove the grant in ARGV[1] of another account's key (the key lives on).
-- KEYS: key hash, external-key index, audit stream
-- ARGV: header (prelude.lua), appKey
-- Answers 'ok', or 'missing' | 'changed'.
if redis.call('HGET', KEYS[1], 'acct') == ARGV[1] then return 'missing' end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 0 then return 'missing' end
if not unchanged(KEYS[1], ARGV[1]) then return 'changed' end
local before = gsnap(KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], 'g:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[7])
committed(KEYS[1], KEYS[3], before, {})
return 'ok'
