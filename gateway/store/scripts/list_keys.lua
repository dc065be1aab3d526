-- One page of an account's generated keys, filtered and sorted, from its listing
-- indexes (key_rules.lua); read-only, and it makes no temporary key.
-- KEYS: the six listing indexes (creation date, token date, last use, label, status,
--       role names), [the holders of the role filtered on]
-- ARGV: sort (creationDate | creationDateToken | lastUsed | label | status | appKey),
--       '1' descending, offset, count, status filter ('' | '0' active | '1' inactive),
--       token dates from, until ([from, until) in ms, '' for no bound), q folded ('' for
--       none), key name prefix, the roles the caller may act on (JSON list, '' for any),
--       the caller's own key (listed whatever its roles), '1' when KEYS[7] is given,
--       then, optionally, q's matches as the caller found them (search.py): 'given'
--       and their members of the label index ('folded label NUL key') joined by
--       newlines (one argument: thousands of arguments cost the client more to send
--       than the script to split), or 'total:N' (their number alone, counted within
--       the status, role and token date filters, when the caller may act on every
--       role; each key is then matched here as it is walked)
-- Not yet in KEYS: the key hashes (ARGV[9] .. appKey) read for q's label match outside
-- the label index, and the holders of the roles the caller may not act on (named from
-- KEYS[6] as key_rules.lua's listing_at names them).
-- Answers {'unindexed'} when the account has keys but its indexes are not complete yet
-- in this layout (index_listing.lua), else {total, appKey, ...}.
--
-- How. The status, role and token date filters are one index's status runs
-- (status_runs.lua): the role's holders, else the token date index, each scored by
-- status and token date. Their matches are one range of scores per status: their
-- total is a count of scores per run, whatever the number of keys, and in token date
-- order they are the merge of those ranges. Only q and the roles the caller may not act on are
-- checked key by key: the smaller of their candidate sets (q's matches, the ranges
-- above, else every key) is read once and checked against the rest, which gives the
-- total. The page comes either from walking the sort's index from the nearer end,
-- checking each key (cheap when matches are dense: about (offset + count) * keys /
-- total steps from the start, or (total - offset) * keys / total from the end), or from
-- sorting the matches (cheap when they are few). A status filter in creation or key
-- order walks only the run of its status (the creation and status indexes hold each
-- status as a run of ranks in that order).
if redis.call('SISMEMBER', KEYS[6], LISTED) == 0 then
  if pk_card(KEYS[1]) == 0 and redis.call('EXISTS', older_creation_index(KEYS[1])) == 0 then
    return {0}
  end
  return {'unindexed'}
end
local keys_i, tok_i, label_i, status_i, roles_i = KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6]
local holders = string.sub(roles_i, 1, -6) .. 'holding:'
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
-- the account listed: the last part of its role names set's name (an account holds no
-- ':', '{' or '}': names.py)
local own_grant = 'g:' .. string.match(KEYS[6], '([^:{}]+)}?:roles$')

-- the roles key k holds in the account (none for a key deleted)
local function own_roles(k)
  local grant = redis.call('HGET', key_prefix .. k, own_grant)
  return grant_roles(grant)
end

-- key k's score in the token date index (nil: no such key)
local function token_score(k)
  return token_score_at(key_prefix .. k)
end

-- Every listing index is a packed set (packed.lua): read by ranks through it, and a
-- key's score in it read from its hash (a member of the label index looked up in it).
local packed = {
  [KEYS[1]] = function(k)
    local v = redis.call('HMGET', key_prefix .. k, 'created', 'tokCreated', 'status')
    if not v[2] then return nil end
    return run_score(created_of(v[1], v[2]), v[3])
  end,
  [KEYS[2]] = token_score,
  -- the label index: its members are what it holds (a score when listed)
  [KEYS[4]] = function(member) return pk_has(KEYS[4], 0, member) and 0 or nil end,
  [KEYS[3]] = function(k) return pk_whole(redis.call('HGET', key_prefix .. k, 'lastUsed')) end,
  [KEYS[5]] = function(k)
    return redis.call('HGET', key_prefix .. k, 'status') == 'active' and 0 or 1
  end,
}
if role_set then
  -- the role's holders: scored as the token date index, the keys holding the role
  local role = string.sub(role_set, #holders + 1)
  packed[role_set] = function(k)
    local v = redis.call('HMGET', key_prefix .. k, 'tokCreated', 'status', own_grant)
    if not v[3] then return nil end
    for _, held in ipairs(grant_roles(v[3])) do
      if held == role then return run_score(v[1], v[2]) end
    end
    return nil
  end
end

local function num(x) return string.format('%d', x) end

-- q's matches as the caller found them, if it did
local q_given, q_count, q_total, q_keys = nil, 0, nil, {}
if ARGV[13] == 'given' then
  q_given = {}
  -- one pattern with captures: half the cost of finding each NUL and cutting there
  for folded, k in string.gmatch(ARGV[14] or '', '([^\n%z]*)%z([^\n]+)') do
    q_given[k] = folded
    q_keys[#q_keys + 1] = k
  end
  q_count = #q_keys
elseif ARGV[13] and string.sub(ARGV[13], 1, 6) == 'total:' then
  q_total = tonumber(string.sub(ARGV[13], 7))
end

-- each role in use that the caller may not act on
local excluded = {}
if ARGV[10] ~= '' then
  local may = {}
  for _, role in ipairs(cjson.decode(ARGV[10])) do may[role] = true end
  for _, role in ipairs(redis.call('SMEMBERS', roles_i)) do
    if role ~= '' and string.sub(role, 1, 1) ~= ':' and not may[role] then
      excluded[#excluded + 1] = role
    end
  end
end

local n = pk_card(keys_i)
local active = pk_count(status_i, 0, 0)
local sizes = {[keys_i] = n, [status_i] = n}
local function index_size(index)
  if not sizes[index] then
    sizes[index] = pk_card(index)
  end
  return sizes[index]
end

-- The status, role and token date filters: the status runs of one index (``dated``)
-- restricted to the token dates asked, each {first rank, size}.
local dated_filter = status ~= nil or role_set ~= nil or has_dates
local dated = role_set or tok_i
local low_date = math.max(from or 0, 0)
local high_date = math.min(after or INACTIVE_AT, INACTIVE_AT)
local dated_runs, dated_total = {}, 0
for _, st in ipairs(status and {status} or {0, 1}) do
  local base = st * INACTIVE_AT
  local lo, hi = base + low_date, base + math.max(high_date, low_date) - 1
  local size = pk_count(dated, lo, hi)
  dated_runs[#dated_runs + 1] = {first = pk_count(dated, 0, lo - 1), size = size}
  dated_total = dated_total + size
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

-- Whether key k is in the dated runs: its score there (from its hash) gives its role
-- (it is in the role's holders), its status and its token date.
local function in_dated(k)
  local score = packed[dated](k)
  if not score then return false end
  local st = score >= INACTIVE_AT and 1 or 0
  if status and st ~= status then return false end
  local date = score - st * INACTIVE_AT
  return date >= low_date and date < high_date
end

-- Whether key k passes every filter but ``skip`` (the one its candidate set ensures).
local function passes(k, skip, folded)
  if dated_filter and skip ~= 'dated' and not in_dated(k) then return false end
  if #excluded > 0 and k ~= own then
    local roles = {}
    for _, role in ipairs(own_roles(k)) do roles[role] = true end
    for _, role in ipairs(excluded) do
      if roles[role] then return false end
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
  local flat, out = pk_range(index, first, last - first + 1, reverse), {}
  for i = 1, #flat, 2 do out[#out + 1] = flat[i] end
  return out
end

local function entries(flat)
  local out = {}
  for i = 1, #flat, 2 do out[#out + 1] = {flat[i], tonumber(flat[i + 1])} end
  return out
end

-- the i-th to (i + count - 1)-th entries {key, score} of a run {first, size} of an
-- index, in the listing's direction (within the run)
local function run_entries(index, run, i, count)
  local last = math.min(i + count, run.size) - 1
  if last < i then return {} end
  local top = desc and index_size(index) - run.first - run.size or run.first
  return entries(pk_range(index, top + i, last - i + 1, desc))
end

-- Both orders that span the two statuses are merges of two runs of one index: key order
-- of the status index's runs, date order of a dated index's. Entries are {key, score}.
local function by_key(x, y) return before(x[1], y[1]) end
local function by_date(x, y)
  local dx, dy = run_date(x[2]), run_date(y[2])
  if dx ~= dy then return dx < dy end
  return before(x[1], y[1])
end

-- Visit the merge of two runs of ``index`` in the listing's order from its ``start``-th
-- entry, until visit answers false. ``start`` entries are skipped by bisection (the
-- classic k-th of two sorted lists), so a deep page costs no walk.
local function walk_merged(index, a_run, b_run, less, start, visit)
  local na, nb = a_run.size, b_run.size
  local function a_from(i, count) return run_entries(index, a_run, i, count) end
  local function b_from(j, count) return run_entries(index, b_run, j, count) end
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

-- Visit one run of ``index`` in the listing's order from its ``start``-th entry.
local function walk_run(index, run, start, visit)
  local top = desc and index_size(index) - run.first - run.size or run.first
  while start < run.size do
    local last = math.min(start + CHUNK, run.size) - 1
    local batch = ranks(index, top + start, top + last, desc)
    if #batch == 0 then return end
    for _, member in ipairs(batch) do
      local k, folded = member, nil
      if index == label_i then k, folded = split(member) end
      if not visit(k, folded) then return end
    end
    start = start + CHUNK
  end
end

-- Visit the label index's zones in the listing's order, skipping each whose token
-- dates cannot match the dated runs (status_runs.lua), from its first member.
local function walk_zones(visit)
  local zones, zone_dates = label_i .. ':zones', label_i .. ':zone-dates'
  local fences = redis.call('ZRANGE', zones, 0, -1)
  -- records read as the walk reaches them, 64 at a time (a zone of keys made over
  -- years has a long one)
  local records = {}
  local function record_of(i)
    if records[i] == nil then
      local batch = {}
      local from, to = i, math.min(i + 63, #fences)
      if desc then from, to = math.max(i - 63, 1), i end
      for j = from, to do batch[#batch + 1] = fences[j] end
      local got = redis.call('HMGET', zone_dates, unpack(batch))
      for j = from, to do records[j] = got[j - from + 1] or false end
    end
    return records[i]
  end
  local function may_match(i)
    local z, marks = zone_parse(record_of(i) or '*')
    if not z then return true end  -- unknown: walked
    for _, st in ipairs(status and {status} or {0, 1}) do
      if z[st * 2 + 2] >= low_date and z[st * 2 + 1] < high_date then
        if marks == '~' then return true end
        for period in string.gmatch(marks, st .. '%.(%d+)') do
          local begins = tonumber(period) * ZONE_PERIOD
          if begins + ZONE_PERIOD > low_date and begins < high_date then return true end
        end
      end
    end
    return false
  end
  -- a zone's ranks: from its fence's to the next one's (counted, not an offset walk)
  local function rank_of(fence)
    if not fence then return index_size(label_i) end
    return pk_rank_before(label_i, 0, fence)
  end
  local first, last, step = 1, #fences, 1
  if desc then first, last, step = #fences, 1, -1 end
  for i = first, last, step do
    if may_match(i) then
      local low, high = rank_of(fences[i]), rank_of(fences[i + 1])
      local run = {first = low, size = high - low}
      local stop = false
      walk_run(label_i, run, 0, function(k, folded)
        if visit(k, folded) then return true end
        stop = true
        return false
      end)
      if stop then return end
    end
  end
end

-- What the sort's order walks: runs of one index (two are merged) and the filter a walk
-- ensures ('dated' when it walks exactly the dated runs).
local status_runs = {}
if status ~= 1 then status_runs[#status_runs + 1] = {first = 0, size = active, base = 0} end
if status ~= 0 then
  status_runs[#status_runs + 1] = {first = active, size = n - active, base = INACTIVE_AT}
end
local only_status = not role_set and not has_dates
local walked_index, walked_runs, walked_less, ensures = sort_index, nil, nil, nil
if sort == 'creationDateToken' then
  walked_index, walked_runs, walked_less, ensures = dated, dated_runs, by_date, 'dated'
elseif sort == 'creationDate' or sort == 'appKey' then
  walked_runs, walked_less = status_runs, sort == 'appKey' and by_key or by_date
  if only_status then ensures = 'dated' end
elseif sort == 'status' then
  -- the status index in order is its runs one after the other
  local first = status == 1 and active or 0
  walked_runs = {{first = first, size = status == nil and n or status_runs[1].size}}
  if only_status then ensures = 'dated' end
else
  walked_runs = {{first = 0, size = index_size(sort_index)}}
end
local walked_over = 0
for _, run in ipairs(walked_runs) do walked_over = walked_over + run.size end

-- the label order of a status or token date filter: by zones (none is made before the
-- account's first key)
local by_zones = sort == 'label' and (status ~= nil or has_dates)
                 and redis.call('EXISTS', label_i .. ':zones') == 1

-- Visit the keys in the listing's order from rank ``start`` until visit answers false.
local function walk(start, visit)
  if by_zones and start == 0 then return walk_zones(visit) end
  if #walked_runs == 2 then
    return walk_merged(walked_index, walked_runs[1], walked_runs[2], walked_less, start,
                       visit)
  end
  return walk_run(walked_index, walked_runs[1], start, visit)
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

-- Only the status, role and token date filters, or none: the total is counted, and
-- when the sort's walk visits exactly their matches the page is a range of that walk.
local checked = (needle ~= '' and 1 or 0) + (#excluded > 0 and 1 or 0)
if checked == 0 and (not dated_filter or ensures == 'dated') then
  local total = dated_filter and dated_total or n
  if offset >= total then return answer(total, {}) end
  return answer(total, page_from(offset))
end

-- The candidate sets of the key-by-key checks, each with its size and its members (in
-- no particular order).
local sources = {}
if dated_filter then
  sources[#sources + 1] = {name = 'dated', size = dated_total, members = function()
    local out = {}
    for _, run in ipairs(dated_runs) do
      local flat = pk_range(dated, run.first, run.size, false)
      for i = 1, #flat, 2 do out[#out + 1] = flat[i] end
    end
    return out
  end}
end
if q_given then
  sources[#sources + 1] = {name = 'q', size = q_count, members = function()
    return q_keys
  end}
elseif q_total then
  sources[#sources + 1] = {name = 'q', size = q_total}  -- its members: the pass below
end
-- the cheapest: a dated key read in a range and checked against q's matches costs a
-- third of one of q's matches checked in the dated runs (a score read each)
local function cost(s)
  if s.name == 'q' and dated_filter then return 3 * s.size end
  return s.size
end
-- q's number counts every filter there is (the caller's role exclusions aside, with
-- which it is never given)
local q_covers = not dated_filter or q_total ~= nil
local source = {name = 'all', size = n}
for _, s in ipairs(sources) do
  if cost(s) < cost(source) or source.name == 'all'
     or (s.name == 'q' and q_total and q_covers) then
    source = s
  end
end

-- The matches: known by size alone when the dated runs (counted) or q's matches (counted
-- by the caller) are all there is, else read.
local total, matched = source.size, nil
local function read_matches()
  matched = {}
  local list = {}
  if source.name == 'all' or not source.members then
    -- only q and role exclusions: the label index holds q's half
    local start = 0
    while true do
      local batch = ranks(label_i, start, start + CHUNK - 1, false)
      if #batch == 0 then break end
      for _, member in ipairs(batch) do
        -- one search of the member lowered: the folded label is its own lower case (in
        -- the C locale, as string.lower) and a needle holds no NUL, so this finds q in
        -- the label or in the key, as two searches would, at a third of the cost
        if needle == '' or string.find(string.lower(member), needle, 1, true) then
          local k, folded = split(member)
          if passes(k, 'q', nil) then
            matched[k] = folded
            list[#list + 1] = k
          end
        end
      end
      start = start + CHUNK
    end
  elseif source.name == 'q' and q_given and not dated_filter and #excluded == 0 then
    -- q's matches as given are all there is to check: each passes, and carries its
    -- folded label
    matched, list = q_given, q_keys
  else
    for _, k in ipairs(source.members()) do
      -- q's matches as given carry their folded label
      if passes(k, source.name, nil) then matched[k] = q_given and q_given[k] or true
        list[#list + 1] = k end
    end
  end
  total = #list
  return list
end
local list
local counted = checked == 0
                or (checked == 1 and needle ~= '' and q_covers and source.name == 'q')
if not counted then list = read_matches() end
if total == 0 or offset >= total or count == 0 then return answer(total, {}) end

-- A token is issued when its key is made or later, never before (but for the clocks of
-- keygate's instances disagreeing: a day's margin), so a key made after a token-date
-- range's end (and the margin) cannot match: newest first in creation order, a walk
-- starts after them. (The renewal alert's red keys are the oldest: without this, their
-- first page walked past every key that is not red.)
local function cannot_match(newest_first)
  if sort ~= 'creationDate' or not newest_first or not after then return 0 end
  local made_after = after + 86400000
  local found = 0
  for _, run in ipairs(walked_runs) do  -- the status runs of the creation index
    found = found + pk_count(keys_i, run.base + made_after + 1,
                             run.base + INACTIVE_AT - 1)
  end
  return found
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
    if matched then ok = matched[k] ~= nil else ok = passes(k, ensures, folded) end
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

-- Sorting the matches: by numbers that Redis reads in C (their scores in the sort's
-- index), sorted by Lua's own comparison of numbers; strings (keys, and members of the
-- label index for the label order) by numbers made of their bytes (in_byte_order), so
-- that no Lua function runs per pair compared: a comparison function, and byte-by-byte
-- comparison of strings that share a long prefix ('kgk-acme-'), cost ~100 times more.

-- ``items`` {number, value} in order of number (``reverse``: the other way), the values
-- of equal numbers ordered by ``tie``; the first ``want`` of them.
local function order_by(items, tie, reverse, want)
  local groups, numbers = {}, {}
  for _, item in ipairs(items) do
    local group = groups[item[1]]
    if group then group[#group + 1] = item[2]
    else groups[item[1]] = {item[2]}; numbers[#numbers + 1] = item[1] end
  end
  table.sort(numbers)
  local out = {}
  local first, last, step = 1, #numbers, 1
  if reverse then first, last, step = #numbers, 1, -1 end
  for i = first, last, step do
    local group = groups[numbers[i]]
    if #group > 1 then group = tie(group) end
    local from, to, by = 1, #group, 1
    if reverse then from, to, by = #group, 1, -1 end
    for j = from, to, by do out[#out + 1] = group[j] end
    if #out >= want then break end
  end
  return out
end

-- Distinct strings in byte order (as Redis orders members; Lua's '<' on strings follows
-- the server's collation locale): by the number that the six bytes after the prefix
-- they all share make (base 257, a byte past a string's end counted as -1, as byte
-- order puts a string before any longer one it begins: exact in a double), each group
-- of equal numbers likewise past those six bytes.
local in_byte_order
-- keys with equal numbers: in byte order among themselves
local function by_key_order(group) return in_byte_order(group, false, #group) end

in_byte_order = function(strings, reverse, want)
  local first, longest = strings[1], 0
  local shared = #first
  local head = first  -- first's first ``shared`` bytes
  for _, text in ipairs(strings) do
    if #text > longest then longest = #text end
    while shared > 0 and string.sub(text, 1, shared) ~= head do
      shared = shared - 1
      head = string.sub(first, 1, shared)
    end
  end
  if shared >= longest then return strings end  -- one string (they are distinct)
  local items = {}
  for i, text in ipairs(strings) do
    local a, b, c, d, e, f = string.byte(text, shared + 1, shared + 6)
    items[i] = {((((((a or -1) * 257 + (b or -1)) * 257 + (c or -1)) * 257 + (d or -1))
                  * 257 + (e or -1)) * 257 + (f or -1)), text}
  end
  return order_by(items, by_key_order, reverse, want)
end

-- a number per match for the sort, read from each key's hash (the label index's: whether
-- it holds the member)
local function scores(index, keys)
  local out = {}
  for i, k in ipairs(keys) do out[i] = packed[index](k) end
  return out
end

local function sorted_page(keys, want)
  if sort == 'appKey' then return in_byte_order(keys, desc, want) end
  if sort == 'label' then
    -- the members of the label index, in its order; a match whose folded label is not
    -- known, or not in the label index as known (a label changed since the caller read
    -- it), is read from its hash
    local members = {}
    for i, k in ipairs(keys) do
      local folded = matched[k]
      members[i] = (type(folded) == 'string' and folded or '') .. '\0' .. k
    end
    local listed = scores(label_i, members)
    for i, k in ipairs(keys) do
      if not listed[i] then members[i] = folded_label(k) .. '\0' .. k end
    end
    local out = {}
    for i, member in ipairs(in_byte_order(members, desc, want)) do
      out[i] = string.sub(member, string.find(member, '\0', 1, true) + 1)
    end
    return out
  end
  local items = {}
  local got = scores(sort_index, keys)
  local by_run = sort == 'creationDate' or sort == 'creationDateToken'
  for i, k in ipairs(keys) do
    local score = got[i] or 0
    items[i] = {by_run and run_date(score) or score, k}
  end
  return order_by(items, by_key_order, desc, want)
end

-- The page: walk the sort's index from whichever end is nearer, or sort the matches,
-- whichever costs less. A walk steps over about walked / total keys per match, each
-- step a score read; a sort reads each match's sort number (a label it does not know
-- from its hash, dearer), then sorts numbers in C.
local want = math.min(offset + count, total)
local walk_cost = want * (walked_over - cannot_match(desc)) / total
local back_cost = (total - offset) * (walked_over - cannot_match(not desc)) / total
local sort_cost = total * ((sort == 'label' and source.name == 'dated') and 6 or 2)
if not list and not source.members then
  sort_cost = sort_cost + n  -- the matches not known yet: a pass over the label index
end
if math.min(walk_cost, back_cost) <= sort_cost then
  return answer(total, walked(offset, want - 1, back_cost < walk_cost))
end
list = list or read_matches()
local ordered = sorted_page(list, want)
local out = {}
for i = offset + 1, want do out[#out + 1] = ordered[i] end
return answer(total, out)
