-- One packed sorted set (packed.lua), read or written as a whole: to build one from a
-- sorted set of an older layout, to read one in bulk, and to check it.
-- KEYS: the packed set's name
-- ARGV: the operation, then its arguments:
--   add    score, member, score, member, ...  the entries added (not there already)
--   remove score, member, ...                 the entries removed
--   range  start, count, '1' from the last    {member, score, ...} (ZRANGE WITHSCORES)
--   count  low, high                          how many scores are from low to high
--   rank   score, member                      how many entries are before that one
--   after  score, member, count               ``count`` entries after that one ('' for the
--                                             score: from the first)
--   from   count, low, high, low, high, ...   in each range of scores (both ends in), its
--                                             first ``count`` entries, all read at once:
--                                             {{member, score, ...}, ...}
--   card                                      how many entries it holds
--   drop                                      the whole set removed
local op, n = ARGV[1], KEYS[1]
if op == 'add' or op == 'remove' then
  local done = 0
  local each = op == 'add' and pk_add or pk_remove
  for i = 2, #ARGV, 2 do done = done + each(n, ARGV[i], ARGV[i + 1]) end
  return done
elseif op == 'range' then
  return pk_range(n, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1')
elseif op == 'count' then
  return pk_count(n, tonumber(ARGV[2]), tonumber(ARGV[3]))
elseif op == 'rank' then
  return pk_rank_before(n, ARGV[2], ARGV[3])
elseif op == 'after' then
  -- the entries after an entry (held or not; none given: from the first), read by
  -- value: entries added or removed meanwhile shift no other
  local start = 0
  if ARGV[2] ~= '' then
    start = pk_rank_before(n, ARGV[2], ARGV[3])
    if pk_has(n, ARGV[2], ARGV[3]) then start = start + 1 end
  end
  return pk_range(n, start, tonumber(ARGV[4]), false)
elseif op == 'from' then
  local most, out = tonumber(ARGV[2]), {}
  for i = 3, #ARGV, 2 do
    local low, high = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    local flat, kept = pk_range(n, pk_count(n, 0, low - 1), most, false), {}
    for j = 1, #flat, 2 do
      if tonumber(flat[j + 1]) > high then break end
      kept[#kept + 1] = flat[j]
      kept[#kept + 1] = flat[j + 1]
    end
    out[#out + 1] = kept
  end
  return out
elseif op == 'card' then
  return pk_card(n)
elseif op == 'drop' then
  pk_drop(n)
  return 1
end
return redis.error_reply('packed_index: no operation ' .. tostring(op))
