-- Delete a generated key: its hash becomes a tombstone {deleted: ms}, so that its name
-- is never issued again; its grants in other accounts and its unopened link go with it.
-- KEYS: key hash, audit stream, owners set, the six listing indexes (key_rules.lua)
-- ARGV: header (prelude.lua), appKey, now
-- Answers {'ok', the unopened link's name or '', the grant follow-ups still pending (JSON:
-- account → follow-up), the other accounts that granted the key roles…}: the caller
-- deletes the link, applies those follow-ups (a grant made just before the deletion was
-- in force: its audit event must not go with the hash) and takes the key out of those
-- accounts' external-key indexes (other slots; all idempotent, and a stale index entry
-- is never listed, since listing reads the grant from the hash); or {'missing'} |
-- {'changed'} | {'unindexed'} | {'last_owner'}.
if not owned(KEYS[1], ARGV[1]) then return {'missing'} end
if not unchanged(KEYS[1], ARGV[1]) then return {'changed'} end
if unindexed(KEYS[3]) then return {'unindexed'} end
if last_owner(KEYS[3], ARGV[7]) then return {'last_owner'} end
local before = snap(KEYS[1], ARGV[1])
unlist(listing_at(4), KEYS[1], ARGV[7], ARGV[1], true)
local answer = {'ok', redis.call('HGET', KEYS[1], 'link') or '', ''}
local pending, any_pending = {}, false
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'g:' and string.sub(f, 3) ~= ARGV[1] then
    answer[#answer + 1] = string.sub(f, 3)
  elseif string.sub(f, 1, 3) == 'fu:' then
    pending[string.sub(f, 4)] = fields[i + 1]
    any_pending = true
  end
end
if any_pending then answer[3] = cjson.encode(pending) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'deleted', ARGV[8])
redis.call('SREM', KEYS[3], ARGV[7])
committed(KEYS[1], KEYS[2], before, {})
return answer
