-- Take the value out of a one-time link, exactly once; audited in its key's account.
-- KEYS: link
-- ARGV: key name prefix, account name prefix, audit cap, event (without account and
--       target, which come from the link's value), now
-- Not yet in KEYS: the key hash (ARGV[1] .. appKey) and the audit stream
-- (ARGV[2] .. account .. ':audit'), both read from the link's value.
-- Expiry is checked against keygate's clock; Redis's TTL only collects the garbage.
-- Answers the value, or false when the link is gone or expired.
local value = redis.call('GET', KEYS[1])
if not value then return false end
redis.call('DEL', KEYS[1])
local v = cjson.decode(value)
if tonumber(v['expires']) <= tonumber(ARGV[5]) then return false end
local key = ARGV[1] .. v['appKey']
if redis.call('HGET', key, 'link') == KEYS[1] then
  redis.call('HDEL', key, 'link', 'linkExp')
end
local event = cjson.decode(ARGV[4])
event['account'] = v['account']
event['target'] = v['appKey']
audit(ARGV[2] .. v['account'] .. ':audit', ARGV[3], cjson.encode(event), {}, {})
return value
