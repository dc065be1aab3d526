-- Remove the grant in ARGV[1] of another account's key (the key lives on;
-- grant_snapshot.lua says how).
-- KEYS: key hash
-- ARGV: header (prelude.lua), follow-up id
-- Answers {'ok'}, or {'missing'} | {'changed'} | {'followup'}.
if redis.call('HGET', KEYS[1], 'acct') == ARGV[1] then return {'missing'} end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[1]) == 0 then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if followup_pending(KEYS[1], ARGV[1]) then return {'followup'} end
local before = gsnap(KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], 'g:' .. ARGV[1])
granted(KEYS[1], ARGV[1], 'remove', 0, before, {})
return {'ok'}
