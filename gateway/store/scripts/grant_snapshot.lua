-- Helpers of the scripts that change a grant in another account (after the prelude).
--
-- A grant lives in the key's hash (the owner's slot) while the granting account's
-- external-key index and audit stream live in that account's slot. So a grant change
-- is the change itself here, atomically with its invalidation notice and a follow-up
-- written into the same hash (field 'fu:' .. account): the index step and the audit
-- event, which the caller then applies in the granting account's slot
-- (apply_followup.lua, idempotent) and clears (clear_followup.lua). A follow-up a crash
-- leaves behind is applied before the next change of that grant, or by
-- `keygate store migrate`; a grant never has two follow-ups at once.

-- The audited view of a grant: what the granting account manages.
local function gsnap(key, acct)
  local raw = redis.call('HGET', key, 'g:' .. acct)
  if not raw then return {} end
  local g = grant_decode(raw)
  return {label = g['label'], roles = g['roles'], status = g['status']}
end

-- Whether a follow-up of an earlier change of this grant is still to be applied.
local function followup_pending(key, acct)
  return redis.call('HEXISTS', key, 'fu:' .. acct) == 1
end

-- The end of every grant change: its follow-up (index step 'add' | 'remove' | '', the
-- index score, the audit event) and the invalidation notice. ARGV[#ARGV] is the
-- follow-up's id, unique per change.
local function granted(key, acct, index_step, score, before, after)
  redis.call('HSET', key, 'fu:' .. acct, cjson.encode({
    id = ARGV[#ARGV], index = index_step, score = score, event = ARGV[3],
    before = before, after = after,
  }))
  redis.call('PUBLISH', ARGV[4], key)
end
