-- The creation index (``keys``): an active key at its creation date (ms), an inactive
-- one at that date plus INACTIVE_AT. Each status is then a run of ranks in creation
-- order, the active run first, so a status filter's page in creation order is a range of
-- ranks, and the creation order of every key is the merge of the two runs
-- (list_keys.lua). 2^43 ms is the year 2248: a date past it is clamped (the key keeps
-- its status's run). Scores stay below 10^14, which Lua prints exactly.
local INACTIVE_AT = 8796093022208

local function creation_score(created, status)
  local made = math.min(math.max(tonumber(created) or 0, 0), INACTIVE_AT - 1)
  if status == 'active' then return made end
  return made + INACTIVE_AT
end

-- the creation date of a score of the creation index
local function creation_date(score)
  if score >= INACTIVE_AT then return score - INACTIVE_AT end
  return score
end
