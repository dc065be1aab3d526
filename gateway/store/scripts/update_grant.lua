-- Change the grant in ARGV[1] of another account's key (grant_snapshot.lua says how).
-- KEYS: key hash
-- ARGV: header (prelude.lua), JSON of the grant's fields to change, follow-up id
-- Answers {'ok', owner, grant JSON after}, or {'missing'} | {'changed'} | {'followup'}.
local raw = redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])
if not raw or redis.call('HGET', KEYS[1], 'acct') == ARGV[1] then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if followup_pending(KEYS[1], ARGV[1]) then return {'followup'} end
local before = gsnap(KEYS[1], ARGV[1])
local grant = grant_decode(raw)
for name, value in pairs(cjson.decode(ARGV[7])) do grant[name] = value end
redis.call('HSET', KEYS[1], 'g:' .. ARGV[1], cjson.encode(grant))
granted(KEYS[1], ARGV[1], '', 0, before, gsnap(KEYS[1], ARGV[1]))
return {'ok', redis.call('HGET', KEYS[1], 'acct'), redis.call('HGET', KEYS[1], 'g:' .. ARGV[1])}
