-- Grant roles in ARGV[1] to another account's key (grant_snapshot.lua says how).
-- KEYS: key hash
-- ARGV: header (prelude.lua), grant JSON, now, follow-up id
-- Answers {'ok', owner, grant JSON}, or {'no_key'} | {'own'} | {'exists'} | {'followup'}.
local owner = redis.call('HGET', KEYS[1], 'acct')
if not owner then return {'no_key'} end
if owner == ARGV[1] then return {'own'} end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 1 then return {'exists'} end
if followup_pending(KEYS[1], ARGV[1]) then return {'followup'} end
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], ARGV[7])
granted(KEYS[1], ARGV[1], 'add', ARGV[8], {}, gsnap(KEYS[1], ARGV[1]))
return {'ok', owner, ARGV[7]}
