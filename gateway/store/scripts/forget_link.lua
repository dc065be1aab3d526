-- Forget a key's pending link whose record is gone: taken by an opening whose second
-- step (open_link.lua, in the key's slot) never ran, so the key still said a link was
-- pending and refused renewals until its expiry, though no one can open it any more.
-- KEYS: key hash
-- ARGV: the link's name, as the key holds it
-- Answers 1 when forgotten, 0 when the key names another link or none.
if redis.call('HGET', KEYS[1], 'link') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'link', 'linkExp')
return 1
