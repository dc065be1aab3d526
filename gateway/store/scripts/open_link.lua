-- A one-time link was taken (GETDEL, in the link's own slot): clear it from its key and
-- audit the opening in the key's account.
-- KEYS: key hash, audit stream
-- ARGV: link name, audit cap, audit event
-- Answers 1.
if redis.call('HGET', KEYS[1], 'link') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'link', 'linkExp')
end
audit(KEYS[2], ARGV[2], ARGV[3], {}, {})
return 1
