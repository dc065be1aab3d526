-- Write a batch of last-used times of one account's keys; deleted keys (tombstones)
-- are left alone, and a key's time only moves forward: instances write their batches
-- on their own schedules, so one holding an older use may write after one holding a
-- newer (a late batch would otherwise turn the key's last use back).
-- The keys whose time moved are appended to the account's moves stream, when it exists
-- (a process that keeps the account's keys in last-use order made it, and follows it:
-- search.py), in entries of at most MOVES_PER_ENTRY keys, the stream cut to its last
-- MOVES_KEPT entries (a follower that falls further behind makes its order again).
-- KEYS: the account's last-use index (a packed set: packed.lua), its moves stream, then
--       the key hashes
-- ARGV: the appKeys, then their times, in the order of the hashes
local MOVES_PER_ENTRY = 1000
local MOVES_KEPT = 64
local n = #KEYS - 2
local moved, times = {}, {}
for i = 1, n do
  local held = redis.call('HMGET', KEYS[i + 2], 'acct', 'lastUsed')
  -- a time that is not a number (written by hand) is replaced, never compared
  local at, was = tonumber(ARGV[n + i]), tonumber(held[2])
  if held[1] and (not was or at > was) then
    redis.call('HSET', KEYS[i + 2], 'lastUsed', ARGV[n + i])
    pk_remove(KEYS[1], pk_whole(held[2]), ARGV[i])
    pk_add(KEYS[1], pk_whole(ARGV[n + i]), ARGV[i])
    moved[#moved + 1], times[#times + 1] = ARGV[i], ARGV[n + i]
  end
end
if #moved > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  for first = 1, #moved, MOVES_PER_ENTRY do
    local last = math.min(first + MOVES_PER_ENTRY - 1, #moved)
    redis.call('XADD', KEYS[2], 'MAXLEN', MOVES_KEPT, '*',
               'k', table.concat(moved, '\n', first, last),
               't', table.concat(times, '\n', first, last))
  end
end
return n
