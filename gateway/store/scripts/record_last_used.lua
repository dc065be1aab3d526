-- Write a batch of last-used times of one account's keys; deleted keys (tombstones)
-- are left alone, and a key's time only moves forward: instances write their batches
-- on their own schedules, so one holding an older use may write after one holding a
-- newer (a late batch would otherwise turn the key's last use back).
-- KEYS: the account's last-use index, then the key hashes
-- ARGV: the appKeys, then their times, in the order of the hashes
local n = #KEYS - 1
for i = 1, n do
  local held = redis.call('HMGET', KEYS[i + 1], 'acct', 'lastUsed')
  -- a time that is not a number (written by hand) is replaced, never compared
  local at, was = tonumber(ARGV[n + i]), tonumber(held[2])
  if held[1] and (not was or at > was) then
    redis.call('HSET', KEYS[i + 1], 'lastUsed', ARGV[n + i])
    redis.call('ZADD', KEYS[1], ARGV[n + i], ARGV[i])
  end
end
return n
