-- Ranks ARGV[1] to ARGV[2] of the sorted set KEYS[1] with their scores, as the one flat
-- list {member, score, member, score, ...} that ZRANGE answers (a client would make a
-- pair and a float of each: most of the cost of reading 1,000,000 of them). Read-only.
return redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
