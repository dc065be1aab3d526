-- One page of an account's generated keys, filtered and sorted, from its listing
-- indexes (key_rules.lua); read-only, and it makes no temporary key.
-- KEYS: the six listing indexes (creation date, token date, last use, label, status,
--       role names), [the set of the keys holding the role filtered on]
-- ARGV: sort (creationDate | creationDateToken | lastUsed | label | status | appKey),
--       '1' descending, offset, count, status filter ('' | '0' active | '1' inactive),
--       token dates from, until ([from, until) in ms, '' for no bound), q folded ('' for
--       none), key name prefix, the roles the caller may act on (JSON list, '' for any),
--       the caller's own key (listed whatever its roles), '1' when KEYS[7] is given,
--       then, optionally, q's matches as the caller found them (search.py): 'given'
--       followed by the keys, or 'total:N' (their number alone, when q is the only
--       filter; each key is then matched here as it is walked)
-- Not yet in KEYS: the key hashes (ARGV[9] .. appKey) read for q's label match outside
-- the label index, and the sets of the keys holding a role the caller may not act on
-- (KEYS[6] .. ':' .. role).
-- Answers {'unindexed'} when the account has keys but its indexes are not complete yet
-- (index_listing.lua) or its creation index is an older keygate's (every key at its
-- creation date, whatever its status: creation_index.lua), else {total, appKey, ...}.
--
-- How: the smallest candidate set (a status, a role, a token date range, else every
-- key) is read once and checked against the other filters, which gives the total; a
-- single filter's total is its set's size, without reading it. The page comes either
-- from walking the sort's index from the nearer end, checking each key (cheap when
-- matches are dense: about (offset + count) * keys / total steps from the start, or
-- (total - offset) * keys / total from the end), or from sorting the matches (cheap when
-- they are few). With no filter, or a filter whose set is in the sort's
-- order, the page is a range of ranks. A status filter in creation or key order walks
-- only the run of its status (the creation and status indexes hold each status as a run
-- of ranks in that order).
if redis.call('SISMEMBER', KEYS[6], '') == 0 then
  if redis.call('ZCARD', KEYS[1]) == 0 then return {0} end
  return {'unindexed'}
end
if redis.call('ZCOUNT', KEYS[1], INACTIVE_AT, '+inf') ~= redis.call('ZCOUNT', KEYS[5], 1, 1) then
  return {'unindexed'}
end
local keys_i, tok_i, label_i, status_i, roles_i = KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6]
local sort, desc = ARGV[1], ARGV[2] == '1'
local offset, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local status = ARGV[5] ~= '' and tonumber(ARGV[5]) or nil
local from, after = tonumber(ARGV[6]), tonumber(ARGV[7])
local has_dates = ARGV[6] ~= '' or ARGV[7] ~= ''
local needle, key_prefix, own = ARGV[8], ARGV[9], ARGV[11]
local role_set = ARGV[12] == '1' and KEYS[7] or nil
local sort_index = ({creationDate = KEYS[1], creationDateToken = KEYS[2], lastUsed = KEYS[3],
                     label = KEYS[4], status = KEYS[5], appKey = KEYS[5]})[sort]
local CHUNK = 1000

-- q's matches as the caller found them, if it did
local q_given, q_count, q_total = nil, 0, nil
if ARGV[13] == 'given' then
  q_given = {}
  for i = 14, #ARGV do q_given[ARGV[i]] = true end
  q_count = #ARGV - 13
elseif ARGV[13] and string.sub(ARGV[13], 1, 6) == 'total:' then
  q_total = tonumber(string.sub(ARGV[13], 7))
end

-- sets of the keys holding a role in use that the caller may not act on
local excluded = {}
if ARGV[10] ~= '' then
  local may = {}
  for _, role in ipairs(cjson.decode(ARGV[10])) do may[role] = true end
  for _, role in ipairs(redis.call('SMEMBERS', roles_i)) do
    if role ~= '' and not may[role] then excluded[#excluded + 1] = roles_i .. ':' .. role end
  end
end

-- a member of the label index: the key and the folded label (a label is printable: its
-- fold holds no NUL)
local function split(member)
  local at = string.find(member, '\0', 1, true)
  return string.sub(member, at + 1), string.sub(member, 1, at - 1)
end

local function folded_label(k)
  local v = redis.call('HMGET', key_prefix .. k, 'label', 'lf')
  return v[2] or string.lower(v[1] or '')
end

-- Whether key k passes every filter but ``skip`` (the one its candidate set ensures).
local function passes(k, skip, folded)
  if status and skip ~= 'status'
     and tonumber(redis.call('ZSCORE', status_i, k)) ~= status then return false end
  if role_set and skip ~= 'role' and redis.call('SISMEMBER', role_set, k) == 0 then
    return false
  end
  if has_dates and skip ~= 'dates' then
    local t = tonumber(redis.call('ZSCORE', tok_i, k))
    if not t or (from and t < from) or (after and t >= after) then return false end
  end
  if #excluded > 0 and k ~= own then
    for _, set in ipairs(excluded) do
      if redis.call('SISMEMBER', set, k) == 1 then return false end
    end
  end
  if needle ~= '' and skip ~= 'q' then
    if q_given then return q_given[k] ~= nil end
    folded = folded or folded_label(k)
    return string.find(folded, needle, 1, true) ~= nil
           or string.find(string.lower(k), needle, 1, true) ~= nil
  end
  return true
end

-- ranks [first, last] of an index, in the listing's direction
local function ranks(index, first, last, reverse)
  if reverse then return redis.call('ZRANGE', index, first, last, 'REV') end
  return redis.call('ZRANGE', index, first, last)
end

local n = redis.call('ZCARD', keys_i)
local active = redis.call('ZCOUNT', status_i, 0, 0)

-- Both orders that span the two statuses are merges of two runs of ranks of one index:
-- key order of the status index's runs (the active keys, then the inactive ones, each in
-- key order), creation order of the creation index's. Entries are {key, score}.
local function by_key(x, y) return before(x[1], y[1]) end
local function by_creation(x, y)
  local cx, cy = creation_date(x[2]), creation_date(y[2])
  if cx ~= cy then return cx < cy end
  return before(x[1], y[1])
end

local function entries(flat)
  local out = {}
  for i = 1, #flat, 2 do out[#out + 1] = {flat[i], tonumber(flat[i + 1])} end
  return out
end

-- ranks [first, last] of an index with their scores, in the listing's direction
local function scored(index, first, last, reverse)
  if last < first then return {} end
  if reverse then return entries(redis.call('ZRANGE', index, first, last, 'REV', 'WITHSCORES')) end
  return entries(redis.call('ZRANGE', index, first, last, 'WITHSCORES'))
end

-- Visit the merge of ranks [0, active) and [active, n) of ``index`` in the listing's
-- order from its ``start``-th entry, until visit answers false. ``start`` entries are
-- skipped by bisection (the classic k-th of two sorted lists), so a deep page costs no
-- walk.
local function walk_merged(index, less, start, visit)
  local na, nb = active, n - active
  -- the i-th entry of the active run and the j-th of the inactive one, in the listing's
  -- direction, then ``count`` from there
  local function a_from(i, count)
    if desc then return scored(index, nb + i, math.min(nb + i + count, n) - 1, true) end
    return scored(index, i, math.min(i + count, na) - 1, false)
  end
  local function b_from(j, count)
    if desc then return scored(index, j, math.min(j + count, nb) - 1, true) end
    return scored(index, na + j, math.min(na + j + count, n) - 1, false)
  end
  local function first(a, b) if desc then return less(b, a) end return less(a, b) end
  local lo, hi = math.max(0, start - nb), math.min(start, na)
  while lo < hi do
    local i = math.floor((lo + hi) / 2)
    if first(a_from(i, 1)[1], b_from(start - i - 1, 1)[1]) then lo = i + 1 else hi = i end
  end
  local i, j = lo, start - lo
  local abuf, bbuf, ai, bi = a_from(i, CHUNK), b_from(j, CHUNK), 1, 1
  while true do
    if ai > #abuf and i < na then abuf, ai = a_from(i, CHUNK), 1 end
    if bi > #bbuf and j < nb then bbuf, bi = b_from(j, CHUNK), 1 end
    local a, b = abuf[ai], bbuf[bi]
    if not a and not b then return end
    local k
    if a and (not b or first(a, b)) then k, ai, i = a[1], ai + 1, i + 1
    else k, bi, j = b[1], bi + 1, j + 1 end
    if not visit(k) then return end
  end
end

-- A status filter in creation or key order: the run of that status in the index of
-- that order, which holds exactly its keys in the listing's order (nil for any other).
local run = nil
if status and (sort == 'creationDate' or sort == 'appKey' or sort == 'status') then
  run = {index = sort == 'creationDate' and keys_i or status_i,
         base = status == 1 and active or 0, size = status == 1 and n - active or active}
end

-- Visit the keys in the listing's order from rank ``start`` until visit answers false.
local function walk(start, visit)
  local index, first, last = sort_index, 0, n
  if run then
    index, first, last = run.index, run.base, run.base + run.size
    if desc then first, last = n - last, n - first end
  elseif sort == 'appKey' then return walk_merged(status_i, by_key, start, visit)
  elseif sort == 'creationDate' then return walk_merged(keys_i, by_creation, start, visit)
  end
  start = first + start
  while start < last do
    local batch = ranks(index, start, math.min(start + CHUNK, last) - 1, desc)
    if #batch == 0 then return end
    for _, member in ipairs(batch) do
      local k, folded = member, nil
      if sort == 'label' then k, folded = split(member) end
      if not visit(k, folded) then return end
    end
    start = start + CHUNK
  end
end

local function page_from(start)
  local out = {}
  if count > 0 then
    walk(start, function(k) out[#out + 1] = k; return #out < count end)
  end
  return out
end

local function answer(total, page)
  local result = {total}
  for _, k in ipairs(page) do result[#result + 1] = k end
  return result
end

-- No filter: a range of ranks.
local filters = (status and 1 or 0) + (role_set and 1 or 0) + (has_dates and 1 or 0)
                + (needle ~= '' and 1 or 0) + (#excluded > 0 and 1 or 0)
if filters == 0 then return answer(n, page_from(offset)) end

-- The candidate sets, each with its size and its members (in its own order).
local low = from and tostring(from) or '-inf'
local high = after and ('(' .. tostring(after)) or '+inf'
local sources = {}
if status then
  sources[#sources + 1] = {name = 'status', size = status == 0 and active or n - active,
    order = run and 'run' or nil,
    members = function() return redis.call('ZRANGE', status_i, status, status, 'BYSCORE') end}
end
if role_set then
  sources[#sources + 1] = {name = 'role', size = redis.call('SCARD', role_set),
    members = function() return redis.call('SMEMBERS', role_set) end}
end
if has_dates then
  sources[#sources + 1] = {name = 'dates', size = redis.call('ZCOUNT', tok_i, low, high),
    order = sort == 'creationDateToken' and 'tok' or nil,
    members = function() return redis.call('ZRANGE', tok_i, low, high, 'BYSCORE') end}
end
if q_given then
  sources[#sources + 1] = {name = 'q', size = q_count, members = function()
    local out = {}
    for i = 14, #ARGV do out[#out + 1] = ARGV[i] end
    return out
  end}
elseif q_total then
  sources[#sources + 1] = {name = 'q', size = q_total}  -- its members: the pass below
end
local source = {name = 'all', size = n}
for _, s in ipairs(sources) do
  if s.size < source.size or source.name == 'all' then source = s end
end

-- One filter with a set in the sort's order: a range of ranks within that set.
if filters == 1 and source.order then
  local base = 0
  if source.name == 'status' then
    base = run.base
  else
    base = from and redis.call('ZCOUNT', tok_i, '-inf', '(' .. low) or 0
  end
  if desc then base = n - (base + source.size) end
  local page = {}
  if offset < source.size and count > 0 then
    local last = base + math.min(offset + count, source.size) - 1
    page = ranks(source.name == 'status' and run.index or tok_i, base + offset, last, desc)
  end
  return answer(source.size, page)
end

-- The matches: known by size alone when one filter is all there is, else read.
local total, matched = source.size, nil
local function read_matches()
  matched = {}
  local list = {}
  if source.name == 'all' or not source.members then
    -- only q and role exclusions: the label index holds q's half
    local start = 0
    while true do
      local batch = redis.call('ZRANGE', label_i, start, start + CHUNK - 1)
      if #batch == 0 then break end
      for _, member in ipairs(batch) do
        -- one search of the member lowered: the folded label is its own lower case (in
        -- the C locale, as string.lower) and a needle holds no NUL, so this finds q in
        -- the label or in the key, as two searches would, at a third of the cost
        if needle == '' or string.find(string.lower(member), needle, 1, true) then
          local k, folded = split(member)
          if #excluded == 0 or passes(k, 'q', nil) then
            matched[k] = folded
            list[#list + 1] = k
          end
        end
      end
      start = start + CHUNK
    end
  else
    for _, k in ipairs(source.members()) do
      if passes(k, source.name, nil) then matched[k] = true; list[#list + 1] = k end
    end
  end
  total = #list
  return list
end
local list
if filters > 1 or source.name == 'all' then list = read_matches() end
if total == 0 or offset >= total or count == 0 then return answer(total, {}) end

-- A token is issued when its key is made or later, never before (but for the clocks of
-- keygate's instances disagreeing: a day's margin), so a key made after a token-date
-- range's end (and the margin) cannot match: newest first in creation order, a walk
-- starts after them. (The renewal alert's red keys are the oldest: without this, their
-- first page walked past every key that is not red.)
local function cannot_match(newest_first)
  if sort == 'creationDate' and newest_first and after then
    local made_after = after + 86400000
    local active_after = redis.call('ZCOUNT', keys_i, '(' .. tostring(made_after),
                                    '(' .. tostring(INACTIVE_AT))
    if run and status == 0 then return active_after end
    local inactive_after = redis.call('ZCOUNT', keys_i,
                                      '(' .. tostring(made_after + INACTIVE_AT), '+inf')
    if run then return inactive_after end
    return active_after + inactive_after
  end
  return 0
end

-- The matches at ranks [first, last] (0-based, in the listing's order) by a walk of the
-- sort's index: from its start, or, for a page past the middle, from its end in the
-- other direction (``desc`` flipped for that walk; the walk's closures read it), the
-- page then read back in order.
local function walked(first, last, from_end)
  if from_end then
    first, last = total - 1 - last, total - 1 - first
    desc = not desc
  end
  local out, seen = {}, 0
  walk(cannot_match(desc), function(k, folded)
    local ok
    if matched then ok = matched[k] ~= nil else ok = passes(k, run and 'status', folded) end
    if ok then
      if seen >= first then out[#out + 1] = k end
      seen = seen + 1
    end
    return seen <= last
  end)
  if not from_end then return out end
  desc = not desc
  local page = {}
  for i = #out, 1, -1 do page[#page + 1] = out[i] end
  return page
end

-- The page: walk the sort's index from whichever end is nearer, or sort the matches,
-- whichever costs less (a walk steps over about n / total keys per match).
local want = math.min(offset + count, total)
local walked_over = run and run.size or n
local walk_cost = want * (walked_over - cannot_match(desc)) / total
local back_cost = (total - offset) * (walked_over - cannot_match(not desc)) / total
local sort_cost = total * (math.log(total + 1) / math.log(2) + 2) * 4
if math.min(walk_cost, back_cost) <= sort_cost then
  return answer(total, walked(offset, want - 1, back_cost < walk_cost))
end
list = list or read_matches()
local keyed = {}
for i, k in ipairs(list) do
  local key
  if sort == 'label' then
    local folded = matched[k]
    if folded == true then folded = folded_label(k) end
    key = folded .. '\0' .. k
  elseif sort == 'creationDate' then
    key = creation_date(tonumber(redis.call('ZSCORE', sort_index, k)))
  elseif sort ~= 'appKey' then
    key = tonumber(redis.call('ZSCORE', sort_index, k))
  end
  keyed[i] = {key, k}
end
local function less(x, y)
  if type(x[1]) == 'number' and x[1] ~= y[1] then return x[1] < y[1] end
  if type(x[1]) == 'string' then return before(x[1], y[1]) end
  return before(x[2], y[2])
end
if desc then table.sort(keyed, function(x, y) return less(y, x) end)
else table.sort(keyed, less) end
local out = {}
for i = offset + 1, want do out[#out + 1] = keyed[i][2] end
return answer(total, out)
