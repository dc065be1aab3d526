-- Write a batch of last-used times; deleted keys (tombstones) are left alone.
-- KEYS: key hashes (of any accounts)
-- ARGV: times, in the same order
for i, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'acct') == 1 then
    redis.call('HSET', key, 'lastUsed', ARGV[i])
  end
end
return #KEYS
