-- Helper of the scripts that change a grant in another account (after the prelude).

-- The audited view of a grant: what the granting account manages.
local function gsnap(key, acct)
  local raw = redis.call('HGET', key, 'g:' .. acct)
  if not raw then return {} end
  local g = cjson.decode(raw)
  return {label = g['label'], roles = g['roles'], status = g['status']}
end
