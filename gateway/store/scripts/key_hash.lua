-- How the scripts read a key hash's fields that are kept short (the hash is the one
-- record every key has; records.py writes them the same way):
-- * a key's own grant, active, is the bare JSON array of its roles; a grant in another
--   account, or one an older keygate wrote, is an object {"roles": [...], ...};
-- * 'created' is written only once a renewal changes the token's date: until then the
--   key's creation date is its token's.

-- a grant field's value as an object
local function grant_decode(raw)
  local g = cjson.decode(raw)
  if g['roles'] == nil then return {roles = g} end
  return g
end

-- the roles a grant field holds (none for no field)
local function grant_roles(raw)
  if not raw then return {} end
  return grant_decode(raw)['roles']
end

-- the key's creation date from its 'created' and 'tokCreated' fields
local function created_of(created, token_created)
  return created or token_created
end

-- Before a change of the token's date: write the creation date it stood for.
local function keep_created(key)
  if redis.call('HEXISTS', key, 'created') == 0 then
    local at = redis.call('HGET', key, 'tokCreated')
    if at then redis.call('HSET', key, 'created', at) end
  end
end
