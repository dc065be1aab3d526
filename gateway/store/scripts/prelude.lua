-- The change prelude: put before every script that changes a key hash (a key or a
-- grant), and before the other audited scripts for audit().
--
-- A change script gets the same first six ARGV (gateway/store/core.py, StoreCore.change):
--   ARGV[1]  the account the change is made in
--   ARGV[2]  the audit cap: MAXLEN ~ of the account's audit stream
--   ARGV[3]  the audit event's header (JSON, an array of strings: time, actor, action,
--            target, requestId; records.py event_header)
--   ARGV[4]  the invalidation channel
--   ARGV[5]  what the caller checked (JSON): the key's roles in ARGV[1] (a list), or
--            {"roles": [...], "elsewhere": {account: [roles], ...}} with the roles
--            other accounts granted it too; '' for no expectation
--   ARGV[6]  '1' when the account must keep an active owner key, else '0'
-- and its own arguments from ARGV[7] on. unchanged() and committed() read that header.

-- An audit event, written by the script that makes the change: the change and its
-- record happen together or not at all. Its fields are the same, in the same order, in
-- every entry (records.py AUDIT_FIELDS), so Redis keeps their names once per node of
-- the stream. A header in an older keygate's layout (one JSON object, in a grant's
-- follow-up written before an upgrade) is written as it was, in one field. ``before``
-- and ``after`` are tables, written in JSON, or strings written as they are (a creation
-- event's: create_key.lua).
local function audit(stream, maxlen, event, before, after)
  local h = cjson.decode(event)
  local fields = {'time', h[1], 'actor', h[2], 'action', h[3], 'target', h[4],
                  'requestId', h[5]}
  if h[1] == nil then fields = {'event', event} end
  for _, side in ipairs({{'before', before}, {'after', after}}) do
    fields[#fields + 1] = side[1]
    fields[#fields + 1] = type(side[2]) == 'string' and side[2] or cjson.encode(side[2])
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- The end of every change of a key hash: its audit event, then the hash's name on the
-- invalidation channel, in the same script, so no change is committed without its
-- notice (every instance drops the key from its credential cache on hearing it).
local function committed(key, stream, before, after)
  audit(stream, ARGV[2], ARGV[3], before, after)
  redis.call('PUBLISH', ARGV[4], key)
end

-- The roles a key holds in an account: its own grant there, or another account's.
local function roles_of(key, acct)
  return grant_roles(redis.call('HGET', key, 'g:' .. acct))
end

local function same_roles(have, want)
  if #have ~= #want then return false end
  for i = 1, #want do
    if have[i] ~= want[i] then return false end
  end
  return true
end

-- Whether the key still holds what the caller checked (ARGV[5]): its roles in ARGV[1]
-- and, when given, exactly the roles other accounts granted it (whoever acts on the key
-- — receives its token — holds those too: a grant made since the check refuses).
local function unchanged(key, acct)
  if ARGV[5] == '' then return true end
  local want = cjson.decode(ARGV[5])
  local roles, elsewhere = want, nil
  if want['roles'] ~= nil then roles, elsewhere = want['roles'], want['elsewhere'] end
  if not same_roles(roles_of(key, acct), roles) then return false end
  if elsewhere == nil then return true end
  local expected, found = 0, 0
  for _ in pairs(elsewhere) do expected = expected + 1 end
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 2) == 'g:' and name ~= 'g:' .. acct then
      local want_there = elsewhere[string.sub(name, 3)]
      local have_there = grant_roles(fields[i + 1])
      if want_there == nil or not same_roles(have_there, want_there) then return false end
      found = found + 1
    end
  end
  return found == expected
end
