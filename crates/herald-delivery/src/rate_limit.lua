-- One turn of a provider's rate limit, shared by every node: GCRA, the
-- token bucket kept as a single number (the "theoretical arrival time").
--
-- The bucket allows one send per `interval` with up to `burst` at once.
-- TAT is when the bucket would be full again. A send may go now if
-- TAT + interval - burst * interval <= now; it then moves TAT on by one
-- interval. Otherwise nothing changes and the caller is told how long to
-- wait before asking again.
--
-- The clock is Redis's own (TIME), so nodes whose clocks disagree still
-- share one schedule. Everything is in whole microseconds, exact in Lua's
-- doubles. The key expires once the bucket is full again: a missing key and
-- an idle bucket mean the same thing, so an unused provider leaves nothing
-- behind.
--
-- KEYS[1]: the bucket (a string: TAT in microseconds since the epoch)
-- ARGV[1]: interval between sends, in microseconds (at least 1)
-- ARGV[2]: burst, the most sends at once (at least 1)
-- Returns: 0 if the send may go now (and counts it), else how many
-- milliseconds to wait before asking again (at least 1).
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call("GET", KEYS[1]) or "0") or 0
if tat < now then
    tat = now
end
local next_tat = tat + interval
local allow_at = next_tat - burst * interval
if now < allow_at then
    return math.ceil((allow_at - now) / 1000)
end
local ttl = math.ceil((next_tat - now) / 1000) + 1000
redis.call("SET", KEYS[1], string.format("%.0f", next_tat), "PX", string.format("%d", ttl))
return 0
