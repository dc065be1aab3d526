-- Status runs: the indexes in date order hold each status as a run of ranks. An active
-- key is scored at its date (ms), an inactive one at that date plus INACTIVE_AT, so the
-- active run comes first, each run in date order:
--   * the creation index (``created``), at the key's creation date;
--   * the token date index (``tokens``) and the set of the keys holding each role
--     (``holding:{role}``), at the date of the key's token.
-- (Each a packed set: packed.lua.) A status filter's page in creation or token order is
-- then a range of ranks; a count of keys by any status, role and token date range is
-- one count of scores per run; and the order
-- of every key is the merge of the two runs (list_keys.lua). 2^43 ms is the year 2248: a
-- date past it is clamped (the key keeps its status's run). Scores stay below 10^14,
-- which Lua prints exactly.
local INACTIVE_AT = 8796093022208

-- The member of the role names set (``roles``) that says the listing indexes hold every
-- key of the account in this layout (gateway/store/layout.py). A role name starts with
-- a letter or a digit, a layout's mark with ':'. Older keygates marked their layouts
-- with '' (role sets, token dates without their status), ':status-runs' (the last-use
-- index a sorted set) and ':layout-2' (the creation index a sorted set, ``keys``); an
-- account marked so is indexed again (listing.py, index_listing).
local LISTED = ':layout-3'

-- The creation index of an older layout, a sorted set: the name of ``created`` with
-- ``keys`` in its place. Until the account is indexed again, it lists the keys made
-- before the upgrade (they are added to ``created`` as they change, or by the pass).
local function older_creation_index(created)
  return string.sub(created, 1, -8) .. 'keys'
end

-- The label index is cut into zones, each the members from one fence (a member, or ''
-- for the first) to the next, with a record of its keys' token dates per status: the
-- least and the greatest, and the periods of ZONE_PERIOD ms (about 19 hours) they fall
-- in, up to ZONE_MARKS of them (key_rules.lua keeps them; a record only widens until its zone is cut).
-- A walk in label order with a status or token date filter skips a zone whose dates
-- cannot match: labels people write often follow the order keys were made in ("key
-- 1", "key 2", ...), and then the keys of a token date range sit in a few zones,
-- which a walk checking every key would reach only after most of the index.
local ZONE_SPLIT = 1024
local ZONE_PERIOD = 67108864
local ZONE_MARKS = 64

local function run_score(date, status)
  local at = math.min(math.max(tonumber(date) or 0, 0), INACTIVE_AT - 1)
  if status == 'active' then return at end
  return at + INACTIVE_AT
end

-- a key's score in the token date index, read from its hash (nil: no such key)
local function token_score_at(hash)
  local v = redis.call('HMGET', hash, 'tokCreated', 'status', 'acct')
  if not v[3] then return nil end
  return run_score(v[1], v[2])
end

-- the date of a score in a status run
local function run_date(score)
  if score >= INACTIVE_AT then return score - INACTIVE_AT end
  return score
end

-- A zone's record: ' L0 H0 L1 H1 ' (the least and greatest token date of its active,
-- then inactive keys; INACTIVE_AT and -1 for a status it has none of), then a mark
-- 'S.P ' for each status S and period P (the date over ZONE_PERIOD, rounded down) its
-- keys have, or '~' past ZONE_MARKS of them; or '*' when unknown (the zone is then
-- walked whatever the filter).
-- Answers the dates as a list and the marks, or nil for '*' (nil given: an empty zone).
local function zone_parse(record)
  if record == nil then return {INACTIVE_AT, -1, INACTIVE_AT, -1}, '' end
  local a, b, c, d, marks = string.match(record,
                                         '^ (%d+) (%-?%d+) (%d+) (%-?%d+) (.*)$')
  if not a then return nil end
  return {tonumber(a), tonumber(b), tonumber(c), tonumber(d)}, marks
end
