-- List a chunk of an account's keys in its listing indexes (key_rules.lua): once per
-- account whose keys were written before the indexes.
-- KEYS: the six listing indexes, then key hashes
-- ARGV: account, then per hash: appKey, its label as keygate read it, that label's 'lf'
--       ('' for none)
-- Answers how many keys it listed.
local idx = listing_at(1)
local listed = 0
for i = 7, #KEYS do
  local a = 2 + (i - 7) * 3
  if redis.call('HGET', KEYS[i], 'acct') == ARGV[1] then
    -- a label changed since it was read got its 'lf' from the script that changed it
    if ARGV[a + 2] ~= '' and redis.call('HGET', KEYS[i], 'label') == ARGV[a + 1] then
      redis.call('HSET', KEYS[i], 'lf', ARGV[a + 2])
    end
    list(idx, KEYS[i], ARGV[a], ARGV[1])
    listed = listed + 1
  end
end
return listed
