-- Helpers of the scripts that change a generated key (after the prelude).

-- The audited view of a key: never a digest.
local function snap(key, acct)
  local v = redis.call('HMGET', key, 'label', 'status', 'tokCreated', 'newTokCreated',
                       'g:' .. acct)
  local s = {}
  if v[1] then s['label'] = v[1] end
  if v[2] then s['status'] = v[2] end
  if v[3] then s['creationDateToken'] = tonumber(v[3]) end
  if v[4] then s['creationDateNewToken'] = tonumber(v[4]) end
  if v[5] then s['roles'] = grant_roles(v[5]) end
  return s
end

local function owned(key, acct)
  return redis.call('HGET', key, 'acct') == acct
end

-- The owners set of an account holds its active generated keys with the role owner,
-- and the member '' once it is complete (a new account's is; an older one is indexed
-- on its first guarded change: index_owners.lua).
local function holds_owner(status, roles)
  if status ~= 'active' then return false end
  for _, role in ipairs(roles) do
    if role == 'owner' then return true end
  end
  return false
end

local function unindexed(owners)
  return ARGV[6] == '1' and redis.call('SISMEMBER', owners, '') == 0
end

local function last_owner(owners, app_key)
  return ARGV[6] == '1' and redis.call('SISMEMBER', owners, app_key) == 1
         and redis.call('SCARD', owners) <= 2
end

-- The listing indexes of the key's account (listing.py, names.py LISTING), which every
-- script that changes a generated key keeps up to date. Each script takes their six
-- names in KEYS from position i, all but the last packed sets (packed.lua): creation
-- date and token date, both in status runs (status_runs.lua), last use (keys by that
-- time, 0 for never), label (members 'folded label NUL key', score 0, so in byte
-- order), status (0 active, 1 inactive); and the role names in use (a set, which holds
-- LISTED once the indexes are complete: a new account's are, an older one's are built
-- by index_listing.lua). The keys holding a role are the packed set named
-- ``holding:`` .. role, scored as the token date index. A key's packed entries are
-- taken out at their scores by unlist, read from its hash before a change, and put
-- back by list after it. ``key_prefix``: what the hash names of the account's keys
-- start with (given by the caller, or set by list).
local function listing_at(i, key_prefix)
  local roles, label = KEYS[i + 5], KEYS[i + 3]
  return {keys = KEYS[i], older_keys = older_creation_index(KEYS[i]), tok = KEYS[i + 1],
          used = KEYS[i + 2], label = label, status = KEYS[i + 4], roles = roles,
          holders = string.sub(roles, 1, -6) .. 'holding:',
          zones = label .. ':zones', zone_dates = label .. ':zone-dates',
          key_prefix = key_prefix}
end

-- a key's score in the token date index, from its hash (nil: no such key)
local function token_score_of(idx, app_key)
  return token_score_at(idx.key_prefix .. app_key)
end

-- Zones of the label index (status_runs.lua): a record's marks and dates widened to
-- hold a key at ``score`` (a status run's score); ``marks`` as zone_parse gives them.
local function zone_widen(z, marks, score)
  local st = score >= INACTIVE_AT and 1 or 0
  local date = run_date(score)
  if date < z[st * 2 + 1] then z[st * 2 + 1] = date end
  if date > z[st * 2 + 2] then z[st * 2 + 2] = date end
  if marks == '~' then return marks end
  local mark = st .. '.' .. math.floor(date / ZONE_PERIOD) .. ' '
  if string.find(' ' .. marks, ' ' .. mark, 1, true) then return marks end
  -- past ZONE_MARKS periods (keys made over years, whatever their label), the least
  -- and greatest dates alone
  if select(2, string.gsub(marks, ' ', ' ')) >= ZONE_MARKS then return '~' end
  return marks .. mark
end

local function zone_put(idx, fence, z, marks)
  redis.call('HSET', idx.zone_dates, fence,
             string.format(' %d %d %d %d ', z[1], z[2], z[3], z[4]) .. marks)
end

-- The exact record of the zone from ``fence`` to the next, recorded (fence added);
-- ``members``: the zone's members, read by the caller (``complete``: all of them, else
-- its record is '*').
local function zone_record(idx, fence, members, complete)
  redis.call('ZADD', idx.zones, 0, fence)
  if not complete then
    redis.call('HSET', idx.zone_dates, fence, '*')
    return
  end
  local z, marks = zone_parse(nil)
  for _, m in ipairs(members) do
    local score = token_score_of(idx, string.sub(m, string.find(m, '\0', 1, true) + 1))
    if score then marks = zone_widen(z, marks, score) end
  end
  zone_put(idx, fence, z, marks)
end

-- The ranks of the zone from ``fence`` in the label index: its first, and the first of
-- the next zone (the index's size for the last zone).
local function zone_ranks(idx, fence)
  local next_fence = redis.call('ZRANGE', idx.zones, '(' .. fence, '+', 'BYLEX',
                                'LIMIT', 0, 1)[1]
  local upto = next_fence and pk_rank_before(idx.label, 0, next_fence) or pk_card(idx.label)
  return pk_rank_before(idx.label, 0, fence), upto
end

-- the members of the label index from rank ``first``, ``count`` of them
local function label_members(idx, first, count)
  local flat, members = pk_range(idx.label, first, count, false), {}
  for i = 1, #flat, 2 do members[#members + 1] = flat[i] end
  return members
end

-- the members of the zone from ``fence`` to the next one, up to ``most``
local function zone_members(idx, fence, most)
  local first, upto = zone_ranks(idx, fence)
  return label_members(idx, first, math.min(most, upto - first))
end

-- Widen the record of the zone the key's label member is in with its token score. A member new to the index may leave its zone holding more than ZONE_SPLIT
-- members; it is then cut in two at its middle member, each half's record read exactly
-- (so a record, which only gains marks as keys change, is made exact again as its zone
-- grows).
local function zone_keep(idx, member, token_score, added)
  local fence = redis.call('ZRANGE', idx.zones, '[' .. member, '-', 'BYLEX', 'REV',
                           'LIMIT', 0, 1)[1]
  local z, marks
  if not fence then
    -- the first zone; of an index listed before zones were kept, its keys are unknown
    -- until index_zones.lua has read them
    fence = ''
    redis.call('ZADD', idx.zones, 0, fence)
    if pk_card(idx.label) > 1 then
      redis.call('HSET', idx.zone_dates, fence, '*')
    else
      z, marks = zone_parse(nil)
    end
  else
    z, marks = zone_parse(redis.call('HGET', idx.zone_dates, fence) or '*')
  end
  if z then zone_put(idx, fence, z, zone_widen(z, marks, token_score)) end
  if not added then return end
  local first, upto = zone_ranks(idx, fence)
  local size = upto - first
  -- a zone far larger (made by an older keygate's listing) is cut by index_zones.lua
  if size <= ZONE_SPLIT or size > 2 * ZONE_SPLIT then return end
  local members = label_members(idx, first, size)
  local half = math.floor(#members / 2) + 1
  local low, high = {}, {}
  for i, m in ipairs(members) do
    if i < half then low[#low + 1] = m else high[#high + 1] = m end
  end
  zone_record(idx, fence, low, true)
  zone_record(idx, members[half], high, true)
end

-- A key's member of the label index. The label is folded by keygate (str.casefold); the
-- hash keeps the fold as 'lf' when the label is not ASCII, where Lua's string.lower (the
-- C locale) is the fold. nil when unknown: a label not ASCII and no 'lf', a key written
-- before the indexes, which index_listing.lua lists.
local function label_member(label, lf, app_key)
  if not lf and string.find(label or '', '[\128-\255]') then return nil end
  return (lf or string.lower(label or '')) .. '\0' .. app_key
end

-- a key's score in the status index
local function status_score(status)
  return status == 'active' and 0 or 1
end

-- Take the key out of the indexes whose member or packed entry depends on its fields
-- (before a change of its label, roles, status or token), or out of all of them
-- (``all``: before its delete).
local function unlist(idx, key, app_key, acct, all)
  local v = redis.call('HMGET', key, 'label', 'lf', 'status', 'lastUsed', 'tokCreated',
                       'created')
  local member = v[1] and label_member(v[1], v[2], app_key)
  if member then pk_remove(idx.label, 0, member) end
  local token_score = run_score(v[5], v[3])
  for _, role in ipairs(roles_of(key, acct)) do
    pk_remove(idx.holders .. role, token_score, app_key)
  end
  pk_remove(idx.tok, token_score, app_key)
  pk_remove(idx.status, status_score(v[3]), app_key)
  pk_remove(idx.keys, run_score(created_of(v[6], v[5]), v[3]), app_key)
  if all then
    -- a key made before the upgrade, in an account not indexed again yet
    redis.call('ZREM', idx.older_keys, app_key)
    pk_remove(idx.used, pk_whole(v[4]), app_key)
  end
end

-- Put the key in every index as its hash now is (after a change).
local function list(idx, key, app_key, acct)
  idx.key_prefix = string.sub(key, 1, #key - #app_key)
  if redis.call('HGET', key, 'lf') == '' then redis.call('HDEL', key, 'lf') end
  local v = redis.call('HMGET', key, 'created', 'tokCreated', 'lastUsed', 'label', 'lf',
                       'status')
  pk_add(idx.keys, run_score(created_of(v[1], v[2]), v[6]), app_key)
  local token_score = run_score(v[2], v[6])
  pk_add(idx.tok, token_score, app_key)
  pk_add(idx.used, pk_whole(v[3]), app_key)
  local member = label_member(v[4], v[5], app_key)
  if member then
    local added = pk_add(idx.label, 0, member) == 1
    zone_keep(idx, member, token_score, added)
  end
  pk_add(idx.status, status_score(v[6]), app_key)
  for _, role in ipairs(roles_of(key, acct)) do
    pk_add(idx.holders .. role, token_score, app_key)
    redis.call('SADD', idx.roles, role)
  end
end
