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
  if v[5] then s['roles'] = cjson.decode(v[5])['roles'] end
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
-- names in KEYS from position i: creation date (creation_index.lua: by status, then by
-- date), token date, last use (sorted sets of keys by those times, 0 for never), label (members 'folded label NUL key', score 0),
-- status (0 active, 1 inactive) and the role names in use (a set; the set of the keys
-- holding a role is its name .. ':' .. role; the member '' once the indexes are
-- complete: a new account's are, an older one's are built by index_listing.lua).
local function listing_at(i)
  return {keys = KEYS[i], tok = KEYS[i + 1], used = KEYS[i + 2], label = KEYS[i + 3],
          status = KEYS[i + 4], roles = KEYS[i + 5]}
end

-- A key's member of the label index. The label is folded by keygate (str.casefold); the
-- hash keeps the fold as 'lf' when the label is not ASCII, where Lua's string.lower (the
-- C locale) is the fold. nil when unknown: a label not ASCII and no 'lf', a key written
-- before the indexes, which index_listing.lua lists.
local function label_member(label, lf, app_key)
  if not lf and string.find(label or '', '[\128-\255]') then return nil end
  return (lf or string.lower(label or '')) .. '\0' .. app_key
end

-- Take the key out of the indexes whose member depends on its fields (before a change
-- of its label or roles), or out of all of them (``all``: before its delete).
local function unlist(idx, key, app_key, acct, all)
  local v = redis.call('HMGET', key, 'label', 'lf')
  local member = v[1] and label_member(v[1], v[2], app_key)
  if member then redis.call('ZREM', idx.label, member) end
  for _, role in ipairs(roles_of(key, acct)) do
    redis.call('SREM', idx.roles .. ':' .. role, app_key)
  end
  if all then
    for _, name in ipairs({idx.keys, idx.tok, idx.used, idx.status}) do
      redis.call('ZREM', name, app_key)
    end
  end
end

-- Put the key in every index as its hash now is (after a change).
local function list(idx, key, app_key, acct)
  if redis.call('HGET', key, 'lf') == '' then redis.call('HDEL', key, 'lf') end
  local v = redis.call('HMGET', key, 'created', 'tokCreated', 'lastUsed', 'label', 'lf',
                       'status')
  redis.call('ZADD', idx.keys, creation_score(v[1], v[6]), app_key)
  redis.call('ZADD', idx.tok, v[2] or 0, app_key)
  redis.call('ZADD', idx.used, v[3] or 0, app_key)
  local member = label_member(v[4], v[5], app_key)
  if member then redis.call('ZADD', idx.label, 0, member) end
  redis.call('ZADD', idx.status, v[6] == 'active' and 0 or 1, app_key)
  for _, role in ipairs(roles_of(key, acct)) do
    redis.call('SADD', idx.roles .. ':' .. role, app_key)
    redis.call('SADD', idx.roles, role)
  end
end
