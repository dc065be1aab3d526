-- Set one account setting, audited (settings are read per request, never cached: no
-- notice is published).
-- KEYS: settings hash, audit stream
-- ARGV: audit cap, event, field, value
local before = redis.call('HGET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local b, a = {}, {}
if before then b[ARGV[3]] = tonumber(before) or before end
a[ARGV[3]] = tonumber(ARGV[4]) or ARGV[4]
audit(KEYS[2], ARGV[1], ARGV[2], b, a)
return 1
