-- The keys of the creation index made at one date after a given name, in name order,
-- both statuses merged (export: more keys share a date than a round reads, and a read
-- by offset would skip a key when one before it goes). Read at once, so a key changing
-- status meanwhile is in one run or the other, never missed.
-- KEYS: the creation index
-- ARGV: the date (ms), the name read last, how many at most
local date, after, most = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

local out = {}
for _, score in ipairs({date, date + INACTIVE_AT}) do
  local s = string.format('%d', score)
  local first = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. s)
  local lo, hi = 0, redis.call('ZCOUNT', KEYS[1], s, s)
  while lo < hi do  -- the first at that date named after ``after`` (members sort by byte)
    local mid = math.floor((lo + hi) / 2)
    if not before(after, redis.call('ZRANGE', KEYS[1], first + mid, first + mid)[1]) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  local run = redis.call('ZRANGE', KEYS[1], s, s, 'BYSCORE', 'LIMIT', lo, most)
  for _, name in ipairs(run) do out[#out + 1] = name end
end
table.sort(out, before)
local answer = {}
for i = 1, math.min(most, #out) do answer[i] = out[i] end
return answer
