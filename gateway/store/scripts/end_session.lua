-- End one session of a key (sign-out): every instance refuses it from its next request.
-- KEYS: the key hash
-- ARGV: the session's jti, the last second it is accepted (its expiry and the leeway, s),
--       now (s), the invalidation channel, how many sessions a key keeps ended one by
--       one, the session's issue time (s)
-- The hash's 'sessEnd' (JSON {"until": s, "ended": {jti: expiry}}) ends a session named
-- in 'ended', or issued at or before 'until'. An entry goes once its session would have
-- been refused anyway; when the key already holds as many as it keeps, every session issued
-- until now ends instead, so the field stays small whatever a key's holder does.
-- 'until' never goes back (an instance whose clock is behind would bring back sessions
-- it ended), and reaches the session signed out of, though issued by an instance whose
-- clock is ahead of this one.
-- Answers 1, or 0 for a key that does not exist.
if redis.call('HEXISTS', KEYS[1], 'acct') == 0 then return 0 end
local now, most = tonumber(ARGV[3]), tonumber(ARGV[5])
local raw = redis.call('HGET', KEYS[1], 'sessEnd')
local state = raw and cjson.decode(raw) or {}
local ended, kept = {}, 0
for jti, expires in pairs(state['ended'] or {}) do
  if expires > now then ended[jti], kept = expires, kept + 1 end
end
local until_s = state['until'] or 0
if ended[ARGV[1]] == nil then
  if kept >= most then
    until_s, ended, kept = math.max(until_s, now, tonumber(ARGV[6])), {}, 0
  else
    ended[ARGV[1]], kept = tonumber(ARGV[2]), kept + 1
  end
end
local value = {['until'] = until_s}
if kept > 0 then value['ended'] = ended end
redis.call('HSET', KEYS[1], 'sessEnd', cjson.encode(value))
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
