-- Apply a grant change's follow-up in the granting account's slot, once: the external-key
-- index step and the audit event (grant_snapshot.lua says why it comes apart).
-- KEYS: the account's external-key index, its audit stream, the follow-up's done marker
-- ARGV: the follow-up (JSON), appKey, audit cap, how long the marker lives (ms)
-- The marker (SET NX) makes a replay a no-op: after a crash between this and the
-- clearing of the follow-up, or by another instance that read the follow-up before it
-- was cleared; the caller shortens its life once the follow-up is cleared.
-- Answers 1 when applied now, 0 when it had been.
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[4]) then return 0 end
local fu = cjson.decode(ARGV[1])
if fu['index'] == 'add' then
  redis.call('ZADD', KEYS[1], fu['score'], ARGV[2])
elseif fu['index'] == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
audit(KEYS[2], ARGV[3], fu['event'], fu['before'], fu['after'])
return 1
