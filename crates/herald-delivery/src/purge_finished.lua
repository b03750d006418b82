-- Removes up to ARGV[1] finished jobs of an apalis-redis queue: their ids
-- from the done set (KEYS[1]) or, once that is empty, the dead set
-- (KEYS[2]), with their data (KEYS[3], a hash by id) and metadata
-- (KEYS[4] .. ':' .. id, and the results hash KEYS[4] .. ':result').
-- Returns how many went.
local limit = tonumber(ARGV[1])
local ids = redis.call('SPOP', KEYS[1], limit)
if #ids < limit then
  local dead = redis.call('SPOP', KEYS[2], limit - #ids)
  for _, id in ipairs(dead) do
    table.insert(ids, id)
  end
end
local results = KEYS[4] .. ':result'
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', results, id)
  redis.call('DEL', KEYS[4] .. ':' .. id)
end
return #ids
