-- Change a generated key's label, roles or status.
-- KEYS: key hash, audit stream, owners set, the six listing indexes (key_rules.lua)
-- ARGV: header (prelude.lua), appKey, then field, value, ... to set (from ARGV[8]);
--       a label comes with its 'lf' (key_rules.lua: '' for none)
-- Answers {'ok', the hash after}, or {'missing'} | {'changed'} | {'unindexed'} | {'last_owner'}.
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if unindexed(KEYS[3]) then return {'unindexed'} end
local status, roles = redis.call('HGET', KEYS[1], 'status'), roles_of(KEYS[1], ARGV[1])
for i = 8, #ARGV, 2 do
  if ARGV[i] == 'status' then status = ARGV[i + 1] end
  if ARGV[i] == 'g:' .. ARGV[1] then roles = grant_roles(ARGV[i + 1]) end
end
local owner_after = holds_owner(status, roles)
if not owner_after and last_owner(KEYS[3], ARGV[7]) then return {'last_owner'} end
local before = snap(KEYS[1], ARGV[1])
local idx = listing_at(4)
unlist(idx, KEYS[1], ARGV[7], ARGV[1])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
list(idx, KEYS[1], ARGV[7], ARGV[1])
if owner_after then
  redis.call('SADD', KEYS[3], ARGV[7])
else
  redis.call('SREM', KEYS[3], ARGV[7])
end
committed(KEYS[1], KEYS[2], before, snap(KEYS[1], ARGV[1]))
return {'ok', redis.call('HGETALL', KEYS[1])}
