-- Packed sorted sets: a sorted set of (score, member) kept as many small sorted sets, so
-- that Redis keeps each in its compact encoding (a listpack: some 35 bytes an entry for
-- a 20-byte member and a date, against about 120 in the skiplist and hash table of a
-- large sorted set), in the order a sorted set keeps (score, then member byte order).
--
-- A packed set named N is a tree of three levels, all in N's hash slot (N's hash tag):
--   * buckets ``N:b:<fence>``: sorted sets of at most PACK_CAP entries, each holding the
--     entries from its fence to the next bucket's;
--   * pages ``N:p:<fence>``: the fences of at most PAGE_CAP buckets (members at score
--     0, in byte order), the first of them the page's own fence;
--   * the root ``N``: the fences of the pages;
--   * ``N:n``: how many entries each bucket ('b' .. fence) and page ('p' .. fence)
--     holds, and all of them ('t').
-- A fence is the position of an entry: its score in PACK_DIGITS hexadecimal digits then
-- its member, so that byte order of positions is the set's order; the first page and
-- bucket have the fence '' (before every position). An entry goes in the last bucket
-- whose fence is not after its position. Scores are whole numbers from 0 to 2^52.
--
-- A rank or a count is then read from at most three small sets and their counts (the
-- root, one page, one bucket) however many entries the set holds; an entry is added or
-- removed with a few commands. A full bucket is cut in two, a full page likewise; a
-- bucket left under a quarter full is merged into the one before it when both fit in
-- one, and a page left empty is removed, so entries stay packed as keys come and go. An
-- entry added past a full bucket's others (a date: keys are made in date order) starts
-- the next bucket instead, leaving that one full.
--
-- An entry is added and removed with its score: the caller knows it (a key's scores are
-- read from its hash), and an entry moved to another score is removed at the old one,
-- then added at the new.
--
-- Members are kept without the text they share: an account's keys all start with
-- 'prefix-account-'. The set's first member gives that cut (up to its last '-'), kept
-- as 'c' in ``N:n``; a member starting with it is stored as \1 then the rest, and the
-- rare other member as \0 or \2 then itself, whether it comes before or after the cut
-- in byte order: the stored members keep the members' order, some 12 bytes shorter.
local PACK_CAP = 120
local PAGE_CAP = 120
local PACK_DIGITS = 13

-- A value of a hash as a score: a whole number from 0 (0 for none, or for what is not a
-- number: a hash written by hand is indexed, not refused).
local function pk_whole(value)
  local number = tonumber(value)
  if not number or number ~= number then return 0 end
  return math.min(math.max(math.floor(number), 0), 4503599627370495)
end

-- a whole number as Redis reads it (Lua's own printing drops digits past 14)
local function pk_num(number)
  return string.format('%d', number)
end

local function pk_pos(score, member)
  local s = tonumber(score)
  if not s or s < 0 or s >= 4503599627370496 or s ~= math.floor(s) then
    error('packed set: a score must be a whole number from 0 to 2^52, not ' ..
          tostring(score))
  end
  return string.format('%0' .. PACK_DIGITS .. 'x', s) .. member
end

-- the cut of each set, read once per script run (pk_cut)
local pk_cuts = {}

local function pk_cut(n)
  local cut = pk_cuts[n]
  if cut == nil then
    cut = redis.call('HGET', n .. ':n', 'c') or ''
    pk_cuts[n] = cut
  end
  return cut
end

-- a member as the set stores it, and back
local function pk_enc(n, member)
  local cut = pk_cut(n)
  if cut == '' then return member end
  if string.sub(member, 1, #cut) == cut then return '\1' .. string.sub(member, #cut + 1) end
  if before(member, cut) then return '\0' .. member end
  return '\2' .. member
end

local function pk_dec(n, stored)
  local cut = pk_cut(n)
  if cut == '' then return stored end
  if string.byte(stored, 1) == 1 then return cut .. string.sub(stored, 2) end
  return string.sub(stored, 2)
end

-- the last member of the lexically ordered set ``name`` not after ``pos``
local function pk_floor(name, pos)
  return redis.call('ZRANGE', name, '[' .. pos, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1]
end

-- the page and bucket fences where an entry at ``pos`` is (or would be); nil when the
-- set is empty
local function pk_locate(n, pos)
  local page = pk_floor(n, pos)
  if not page then return nil end
  return page, pk_floor(n .. ':p:' .. page, pos)
end

-- the counts of ``fences`` (of kind 'b' or 'p'), in their order
local function pk_counts(n, kind, fences)
  local counts = {}
  for first = 1, #fences, 1000 do
    local fields = {}
    for i = first, math.min(first + 999, #fences) do fields[#fields + 1] = kind .. fences[i] end
    local got = redis.call('HMGET', n .. ':n', unpack(fields))
    for _, c in ipairs(got) do counts[#counts + 1] = tonumber(c) or 0 end
  end
  return counts
end

local function pk_split_page(n, page, added)
  local name = n .. ':p:' .. page
  local fences = redis.call('ZRANGE', name, 0, -1)
  -- cut in the middle; past the last fence (added at the end), after the one before
  local half = fences[#fences] == added and #fences - 1 or math.floor(#fences / 2)
  local moved, members = {}, {}
  for i = half + 1, #fences do
    moved[#moved + 1] = fences[i]
    members[#members + 1] = 0
    members[#members + 1] = fences[i]
  end
  local held = 0
  for _, c in ipairs(pk_counts(n, 'b', moved)) do held = held + c end
  redis.call('ZADD', n .. ':p:' .. moved[1], unpack(members))
  redis.call('ZREMRANGEBYRANK', name, half, -1)
  redis.call('ZADD', n, 0, moved[1])
  redis.call('HSET', n .. ':n', 'p' .. moved[1], held)
  redis.call('HINCRBY', n .. ':n', 'p' .. page, -held)
end

local function pk_split(n, page, fence, added)
  local name = n .. ':b:' .. fence
  local all = redis.call('ZRANGE', name, 0, -1, 'WITHSCORES')
  local count = #all / 2
  -- cut in the middle; after the one before the last when the entry added is the last
  -- (keys made one after the other, at increasing dates: each bucket is left full)
  local half = all[#all - 1] == added and count - 1 or math.floor(count / 2)
  local new_fence = pk_pos(all[half * 2 + 2], all[half * 2 + 1])
  local moved = {}
  for i = half + 1, count do
    moved[#moved + 1] = all[i * 2]
    moved[#moved + 1] = all[i * 2 - 1]
  end
  redis.call('ZADD', n .. ':b:' .. new_fence, unpack(moved))
  redis.call('ZREMRANGEBYRANK', name, half, -1)
  redis.call('HSET', n .. ':n', 'b' .. fence, half, 'b' .. new_fence, count - half)
  if redis.call('ZADD', n .. ':p:' .. page, 0, new_fence) == 1
     and redis.call('ZCARD', n .. ':p:' .. page) > PAGE_CAP then
    pk_split_page(n, page, new_fence)
  end
end

-- Add an entry (its member not in the set); 1 when added, 0 when it was there already.
local function pk_add(n, score, member)
  local stored = pk_enc(n, member)
  local page, fence = pk_locate(n, pk_pos(score, stored))
  if not page then
    -- a new set: its cut from this member (none for a member holding a NUL: the label
    -- index's 'folded label NUL key' share no text)
    local cut = not string.find(member, '\0', 1, true) and string.match(member, '^(.*%-).+$')
                or ''
    if cut ~= '' then redis.call('HSET', n .. ':n', 'c', cut) end
    pk_cuts[n] = cut
    stored = pk_enc(n, member)
    page, fence = '', ''
    redis.call('ZADD', n, 0, '')
    redis.call('ZADD', n .. ':p:', 0, '')
  end
  if redis.call('ZADD', n .. ':b:' .. fence, 'NX', score, stored) == 0 then return 0 end
  redis.call('HINCRBY', n .. ':n', 't', 1)
  redis.call('HINCRBY', n .. ':n', 'p' .. page, 1)
  if redis.call('HINCRBY', n .. ':n', 'b' .. fence, 1) > PACK_CAP then
    pk_split(n, page, fence, stored)
  end
  return 1
end

local function pk_drop_page(n, page)
  local name = n .. ':p:' .. page
  for _, fence in ipairs(redis.call('ZRANGE', name, 0, -1)) do
    redis.call('DEL', n .. ':b:' .. fence)
    redis.call('HDEL', n .. ':n', 'b' .. fence)
  end
  redis.call('DEL', name)
  redis.call('ZREM', n, page)
  redis.call('HDEL', n .. ':n', 'p' .. page)
end

-- Remove the whole set: its pages and buckets read from the root (no SCAN).
local function pk_drop(n)
  for _, page in ipairs(redis.call('ZRANGE', n, 0, -1)) do pk_drop_page(n, page) end
  redis.call('DEL', n, n .. ':n')
  pk_cuts[n] = nil
end

-- a bucket left under a quarter full, merged into the one before it in its page
local function pk_merge(n, page, fence, left)
  local pname = n .. ':p:' .. page
  local prev = redis.call('ZRANGE', pname, '(' .. fence, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1]
  local held = tonumber(redis.call('HGET', n .. ':n', 'b' .. prev)) or 0
  if held + left > PACK_CAP then return end
  local name = n .. ':b:' .. fence
  if left > 0 then
    local all = redis.call('ZRANGE', name, 0, -1, 'WITHSCORES')
    local moved = {}
    for i = 1, #all, 2 do
      moved[#moved + 1] = all[i + 1]
      moved[#moved + 1] = all[i]
    end
    redis.call('ZADD', n .. ':b:' .. prev, unpack(moved))
  end
  redis.call('DEL', name)
  redis.call('ZREM', pname, fence)
  redis.call('HDEL', n .. ':n', 'b' .. fence)
  redis.call('HSET', n .. ':n', 'b' .. prev, held + left)
end

-- Remove an entry at its score; 1 when removed, 0 when it was not there.
local function pk_remove(n, score, member)
  local stored = pk_enc(n, member)
  local page, fence = pk_locate(n, pk_pos(score, stored))
  if not page then return 0 end
  local name = n .. ':b:' .. fence
  local held = redis.call('ZSCORE', name, stored)
  if not held or tonumber(held) ~= tonumber(score) then return 0 end
  redis.call('ZREM', name, stored)
  if redis.call('HINCRBY', n .. ':n', 't', -1) == 0 then
    -- the set is empty: nothing of it is kept
    pk_drop(n)
    return 1
  end
  local in_page = redis.call('HINCRBY', n .. ':n', 'p' .. page, -1)
  local left = redis.call('HINCRBY', n .. ':n', 'b' .. fence, -1)
  if in_page == 0 and page ~= '' then
    pk_drop_page(n, page)
  elseif fence ~= page and left < PACK_CAP / 4 then
    pk_merge(n, page, fence, left)
  end
  return 1
end

local function pk_card(n)
  return tonumber(redis.call('HGET', n .. ':n', 't')) or 0
end

-- whether the set holds ``member`` at ``score``
local function pk_has(n, score, member)
  local stored = pk_enc(n, member)
  local page, fence = pk_locate(n, pk_pos(score, stored))
  if not page then return false end
  local held = redis.call('ZSCORE', n .. ':b:' .. fence, stored)
  return held ~= false and held ~= nil and tonumber(held) == tonumber(score)
end

-- How many entries are before ``pos`` (a position: pk_pos of a stored member, or a
-- score's digits alone for the first position at that score).
local function pk_rank_of(n, pos)
  local pages = redis.call('ZRANGE', n, '-', '[' .. pos, 'BYLEX')
  if #pages == 0 then return 0 end
  local page = table.remove(pages)
  local rank = 0
  for _, c in ipairs(pk_counts(n, 'p', pages)) do rank = rank + c end
  local fences = redis.call('ZRANGE', n .. ':p:' .. page, '-', '[' .. pos, 'BYLEX')
  local fence = table.remove(fences)
  for _, c in ipairs(pk_counts(n, 'b', fences)) do rank = rank + c end
  -- within the bucket: the entries at a lower score, then those at the same score
  -- whose member is before (byte order, as Redis orders members)
  local name = n .. ':b:' .. fence
  local score = tonumber(string.sub(pos, 1, PACK_DIGITS), 16)
  local member = string.sub(pos, PACK_DIGITS + 1)
  rank = rank + redis.call('ZCOUNT', name, '-inf', '(' .. pk_num(score))
  if member ~= '' then
    for _, m in ipairs(redis.call('ZRANGE', name, pk_num(score), pk_num(score), 'BYSCORE')) do
      if before(m, member) then rank = rank + 1 end
    end
  end
  return rank
end

-- How many entries come before ``member`` at ``score`` (held or not).
local function pk_rank_before(n, score, member)
  return pk_rank_of(n, pk_pos(score, pk_enc(n, member)))
end

-- How many entries have a score from ``low`` to ``high`` (whole numbers, both in).
local function pk_count(n, low, high)
  if high < low then return 0 end
  local function at(score)
    return string.format('%0' .. PACK_DIGITS .. 'x', math.max(0, score))
  end
  local upto = high + 1 >= 4503599627370496 and pk_card(n) or pk_rank_of(n, at(high + 1))
  return upto - pk_rank_of(n, at(low))
end

-- the fences of a root or page, from the last when ``rev``
local function pk_fences(name, rev)
  if rev then return redis.call('ZRANGE', name, '+', '-', 'BYLEX', 'REV') end
  return redis.call('ZRANGE', name, '-', '+', 'BYLEX')
end

-- The entries of ranks ``start`` (from 0) to ``start + count - 1``, from the last when
-- ``rev``: {member, score, member, score, ...}, as ZRANGE ... WITHSCORES answers.
local function pk_range(n, start, count, rev)
  local found = {}
  if count <= 0 then return found end
  local pages = pk_fences(n, rev)
  local page_counts = pk_counts(n, 'p', pages)
  for i, page in ipairs(pages) do
    if start >= page_counts[i] then
      start = start - page_counts[i]
    else
      local fences = pk_fences(n .. ':p:' .. page, rev)
      local counts = pk_counts(n, 'b', fences)
      for j, fence in ipairs(fences) do
        if start >= counts[j] then
          start = start - counts[j]
        else
          local last = start + count - #found / 2 - 1
          local got = rev and redis.call('ZRANGE', n .. ':b:' .. fence, start, last, 'REV',
                                         'WITHSCORES')
                      or redis.call('ZRANGE', n .. ':b:' .. fence, start, last, 'WITHSCORES')
          for k = 1, #got, 2 do
            found[#found + 1] = pk_dec(n, got[k])
            found[#found + 1] = got[k + 1]
          end
          start = 0
          if #found / 2 >= count then return found end
        end
      end
    end
  end
  return found
end
