-- Clear a grant's follow-up from the key hash once applied, if it is still that one.
-- KEYS: key hash
-- ARGV: the follow-up's field, its value as applied
-- Answers 1 when cleared.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
