-- Grant roles in ARGV[1] to another account's key.
-- KEYS: key hash, granting account's external-key index, its audit stream
-- ARGV: header (prelude.lua), grant JSON, now, appKey
-- Answers {'ok', owner, grant JSON}, or {'no_key'} | {'own'} | {'exists'}.
local owner = redis.call('HGET', KEYS[1], 'acct')
if not owner then return {'no_key'} end
if owner == ARGV[1] then return {'own'} end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 1 then return {'exists'} end
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[9])
committed(KEYS[1], KEYS[3], {}, gsnap(KEYS[1], ARGV[1]))
return {'ok', owner, ARGV[7]}
