-- Write a batch of last-used times of one account's keys; deleted keys (tombstones)
-- are left alone.
-- KEYS: the account's last-use index, then the key hashes
-- ARGV: the appKeys, then their times, in the order of the hashes
local n = #KEYS - 1
for i = 1, n do
  if redis.call('HEXISTS', KEYS[i + 1], 'acct') == 1 then
    redis.call('HSET', KEYS[i + 1], 'lastUsed', ARGV[n + i])
    redis.call('ZADD', KEYS[1], ARGV[n + i], ARGV[i])
  end
end
return n
