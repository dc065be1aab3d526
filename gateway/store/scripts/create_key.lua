-- Store a new generated key, with the name of its one-time link if any (the caller
-- writes the link first: a link has a slot of its own, and one whose key was never
-- stored reveals a token that opens nothing).
-- KEYS: key hash, audit stream, owners set, the six listing indexes (key_rules.lua)
-- ARGV: header (prelude.lua), now, appKey, link name or '', link expiry,
--       then field, value, ... of the hash (from ARGV[11])
-- Answers 'taken' when the name was ever used (a tombstone keeps deleted names), else 'ok'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'taken' end
local idx = listing_at(4)
if pk_card(idx.keys) == 0 and redis.call('EXISTS', idx.older_keys) == 0 then
  -- a new account: its owners set and listing indexes are complete from the start
  redis.call('SADD', KEYS[3], '')
  redis.call('SADD', idx.roles, LISTED)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
list(idx, KEYS[1], ARGV[8], ARGV[1])
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'link', ARGV[9], 'linkExp', ARGV[10])
end
if holds_owner(redis.call('HGET', KEYS[1], 'status'), roles_of(KEYS[1], ARGV[1])) then
  redis.call('SADD', KEYS[3], ARGV[8])
end
-- The creation event leaves out what every new key has (records.py AuditEvent, which
-- puts them back): nothing before, the status active, a token issued when the event was
-- written; then what is left, the label and roles, is written as the array
-- [label, role, ...] (the one event every key has: some 20 bytes less each).
local after = snap(KEYS[1], ARGV[1])
if after['status'] == 'active' then after['status'] = nil end
if after['creationDateToken'] == tonumber(cjson.decode(ARGV[3])[1]) then
  after['creationDateToken'] = nil
end
local left = 0
for _ in pairs(after) do left = left + 1 end
if left == 2 and after['label'] and after['roles'] then
  after = cjson.encode({after['label'], unpack(after['roles'])})
end
committed(KEYS[1], KEYS[2], '', after)
return 'ok'
