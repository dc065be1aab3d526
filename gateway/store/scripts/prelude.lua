-- The change prelude: put before every script that changes a key hash (a key or a
-- grant), and before the other audited scripts for audit().
--
-- A change script gets the same first six ARGV (gateway/store/core.py, StoreCore.change):
--   ARGV[1]  the account the change is made in
--   ARGV[2]  the audit cap: MAXLEN ~ of the account's audit stream
--   ARGV[3]  the audit event (JSON: time, account, actor, action, target, requestId)
--   ARGV[4]  the invalidation channel
--   ARGV[5]  the roles the caller checked (JSON), or '' for no expectation
--   ARGV[6]  '1' when the account must keep an active owner key, else '0'
-- and its own arguments from ARGV[7] on. unchanged() and committed() read that header.

-- An audit event, written by the script that makes the change: the change and its
-- record happen together or not at all.
local function audit(stream, maxlen, event, before, after)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event,
             'before', cjson.encode(before), 'after', cjson.encode(after))
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
  local raw = redis.call('HGET', key, 'g:' .. acct)
  if not raw then return {} end
  return cjson.decode(raw)['roles'] or {}
end

-- Whether the key's roles in ARGV[1] are still those the caller checked (ARGV[5]).
local function unchanged(key, acct)
  if ARGV[5] == '' then return true end
  local have, want = roles_of(key, acct), cjson.decode(ARGV[5])
  if #have ~= #want then return false end
  for i = 1, #want do
    if have[i] ~= want[i] then return false end
  end
  return true
end
