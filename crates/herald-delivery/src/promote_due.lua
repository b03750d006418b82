-- Moves jobs that are due from apalis-redis's scheduled set to its active
-- list, at most ARGV[2] of them, oldest first: what the first step of
-- apalis-redis's fetch does, but bounded, so that `unpack` never meets
-- more values than Lua's C stack holds (8,000).
--
-- KEYS[1]: the scheduled set (score: when the job is due, in seconds)
-- KEYS[2]: the active list
-- KEYS[3]: the signal list
-- ARGV[1]: now, in seconds since the epoch
-- ARGV[2]: the most jobs to move
-- Returns: how many jobs moved.
local due = redis.call("zrangebyscore", KEYS[1], 0, ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
if #due > 0 then
    redis.call("rpush", KEYS[2], unpack(due))
    redis.call("zrem", KEYS[1], unpack(due))
    redis.call("del", KEYS[3])
    redis.call("lpush", KEYS[3], 1)
end
return #due
