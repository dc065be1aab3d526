-- Index a chunk of an account's keys in its owners set (see key_rules.lua).
-- KEYS: owners set, then key hashes
-- ARGV: account, then appKeys, in the order of the hashes (ARGV[i] names KEYS[i])
-- Answers how many keys it looked at.
for i = 2, #KEYS do
  local acct = redis.call('HGET', KEYS[i], 'acct')
  if acct == ARGV[1] and holds_owner(redis.call('HGET', KEYS[i], 'status'),
                                     roles_of(KEYS[i], ARGV[1])) then
    redis.call('SADD', KEYS[1], ARGV[i])
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return #KEYS - 1
