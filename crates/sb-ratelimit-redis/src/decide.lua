-- One rate-limit decision, atomically, timed by Redis's own clock (TIME), so the nodes'
-- clocks never meet. KEYS[1] is the counter key; ARGV[1] the operation; the rest its
-- parameters in microseconds. Returns {allowed, remaining, reset_after_us, retry_after_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local op = ARGV[1]

local function expire_us(us)
  redis.call('PEXPIRE', key, math.floor(us / 1000) + 1)
end

if op == 'gcra' then
  -- ARGV: interval_us (may be fractional), burst, hits
  local interval = tonumber(ARGV[2])
  local burst = tonumber(ARGV[3])
  local hits = tonumber(ARGV[4])
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  local burst_offset = interval * burst
  local new_tat = tat + interval * hits
  local allow_at = new_tat - burst_offset
  if now < allow_at then
    local room = math.max(0, now + burst_offset - tat)
    return {0, math.floor(room / interval), math.ceil(tat - now), math.max(1, math.ceil(allow_at - now))}
  end
  -- %.3f keeps the full precision of a double (a plain tostring rounds to 14 digits).
  redis.call('SET', key, string.format('%.3f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
  return {1, math.floor((now + burst_offset - new_tat) / interval), math.ceil(new_tat - now), 0}
end

if op == 'fixed' or op == 'sliding' then
  -- ARGV: window_us, limit, hits
  local window = tonumber(ARGV[2])
  local limit = tonumber(ARGV[3])
  local hits = tonumber(ARGV[4])
  local index = math.floor(now / window)
  local state = redis.call('HMGET', key, 'i', 'p', 'c')
  local stored = tonumber(state[1])
  local prev, cur = 0, 0
  if stored == index then
    prev = tonumber(state[2]) or 0
    cur = tonumber(state[3]) or 0
  elseif stored == index - 1 then
    prev = tonumber(state[3]) or 0
  end
  local start = index * window
  local finish = start + window
  if op == 'fixed' then
    if cur + hits <= limit then
      cur = cur + hits
      redis.call('HSET', key, 'i', index, 'p', 0, 'c', cur)
      expire_us(finish - now)
      return {1, limit - cur, math.ceil(finish - now), 0}
    end
    return {0, math.max(0, limit - cur), math.ceil(finish - now), math.max(1, math.ceil(finish - now))}
  end
  local estimate = prev * ((finish - now) / window) + cur
  local allowed = estimate + hits <= limit
  if allowed then
    cur = cur + hits
    estimate = estimate + hits
    redis.call('HSET', key, 'i', index, 'p', prev, 'c', cur)
    expire_us(finish + window - now)
  end
  local reset = 0
  if cur > 0 then reset = finish + window - now elseif prev > 0 then reset = finish - now end
  local retry = 0
  if not allowed then
    if cur + hits > limit then
      local needed = math.max(0, 1 - (limit - math.min(hits, limit)) / math.max(cur, 1))
      retry = (finish - now) + math.ceil(needed * window)
    else
      local needed = math.max(0, 1 - (limit - cur - hits) / math.max(prev, 1))
      retry = math.max(1, start + math.ceil(needed * window) - now)
    end
  end
  local a = 0
  if allowed then a = 1 end
  return {a, math.floor(math.max(0, limit - estimate)), math.ceil(reset), math.ceil(retry)}
end

if op == 'acquire' then
  -- ARGV: ttl_us, max_permits, permit_id. Permits are a sorted set scored by expiry.
  local ttl = tonumber(ARGV[2])
  local max = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local held = redis.call('ZCARD', key)
  if held < max then
    redis.call('ZADD', key, now + ttl, ARGV[4])
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    expire_us(tonumber(last[2]) - now)
    return {1, max - held - 1, math.ceil(ttl), 0}
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  return {0, 0, math.ceil(tonumber(last[2]) - now), math.max(1, math.ceil(tonumber(first[2]) - now))}
end

if op == 'release' then
  -- ARGV: permit_id. An expired permit is not held.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local removed = redis.call('ZREM', key, ARGV[2])
  return {removed, 0, 0, 0}
end

return redis.error_reply('unknown rate-limit operation ' .. tostring(op))
