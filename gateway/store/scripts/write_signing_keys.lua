-- Write and remove JWT signing keys (sealed), and tell every instance to reload its
-- ring: published with the write.
-- KEYS: the signing keys' hash
-- ARGV: channel, '1' to write only when there is none yet, then kid, sealed pairs to
--       write, then '--', then kids to remove
-- Answers every stored key.
if ARGV[2] == '1' and redis.call('HLEN', KEYS[1]) > 0 then
  return redis.call('HVALS', KEYS[1])
end
local i = 3
while ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('HDEL', KEYS[1], ARGV[j]) end
redis.call('PUBLISH', ARGV[1], KEYS[1])
return redis.call('HVALS', KEYS[1])
