-- Write a batch of last-used times; deleted keys (tombstones) are left alone.
-- KEYS: key hashes (of any accounts)
-- ARGV: key name prefix length, account name prefix, then the times, in the order of
--       the hashes
-- Not yet in KEYS: each key's account's last-use index (ARGV[2] .. account ..
-- ':used', the account read from the hash).
local skip = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local acct = redis.call('HGET', key, 'acct')
  if acct then
    redis.call('HSET', key, 'lastUsed', ARGV[i + 2])
    redis.call('ZADD', ARGV[2] .. acct .. ':used', ARGV[i + 2], string.sub(key, skip + 1))
  end
end
return #KEYS
