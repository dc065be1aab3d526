-- Byte order, as Redis orders members; Lua's '<' on strings follows the server's
-- collation locale.
local function before(a, b)
  if a == b then return false end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
