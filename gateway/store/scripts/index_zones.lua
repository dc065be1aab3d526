-- Cut the label index into zones (status_runs.lua) from one rank: a fence at the member
-- at that rank ('' for rank 0) with the exact dates of the members up to the next
-- fence. Run from the last rank down, a ZONE_SPLIT / 2 apart (listing.py,
-- index_listing), each zone is then that many members; changes meanwhile keep the
-- zones they reach (key_rules.lua), and a fence added is always safe: its record holds
-- every member up to the next fence, and the zone before it keeps a record that held
-- more.
-- KEYS: the six listing indexes
-- ARGV: the rank, what the hash names of the account's keys start with
-- Answers 1 if it made a fence, 0 past the end of the index.
local idx = listing_at(1, ARGV[2])
local rank = tonumber(ARGV[1])
local fence = ''
if rank > 0 then
  fence = pk_range(idx.label, rank, 1, false)[1]
  if not fence then return 0 end
end
local most = 2 * ZONE_SPLIT
local members = zone_members(idx, fence, most)
zone_record(idx, fence, members, #members < most)
return 1
