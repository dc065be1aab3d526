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
