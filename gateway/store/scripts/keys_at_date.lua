-- The keys of the creation index made at one date after a given name, in name order,
-- both statuses merged (export: more keys share a date than a round reads, and a read
-- by offset would skip a key when one before it goes). Read at once, so a key changing
-- status meanwhile is in one run or the other, never missed.
-- KEYS: the creation index (a packed set)
-- ARGV: the date (ms), the name read last, how many at most
local date, after, most = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

local out = {}
for _, score in ipairs({date, date + INACTIVE_AT}) do
  -- the first entry at that score named after ``after`` (entries at one score are in
  -- byte order of their names)
  local start
  if after == '' then
    start = pk_count(KEYS[1], 0, score - 1)
  else
    start = pk_rank_before(KEYS[1], score, after)
    if pk_has(KEYS[1], score, after) then start = start + 1 end
  end
  local flat = pk_range(KEYS[1], start, most, false)
  for i = 1, #flat, 2 do
    if tonumber(flat[i + 1]) ~= score then break end
    out[#out + 1] = flat[i]
  end
end
table.sort(out, before)
local answer = {}
for i = 1, math.min(most, #out) do answer[i] = out[i] end
return answer
