-- Announce the policy version every instance should serve. Written and published
-- together: nobody hears of an announcement that is not there to read.
-- KEYS: the announcement hash
-- ARGV: channel, '1' to write only when there is none yet, version, by, at, forced
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'version') then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'by', ARGV[4], 'at', ARGV[5], 'forced', ARGV[6])
redis.call('PUBLISH', ARGV[1], KEYS[1])
return 1
