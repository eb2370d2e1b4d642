"""The Lua scripts of the Redis memory backend: each write is one script, so atomic.

    script = client.register_script(APPEND)
    await script(keys=[...], args=[...])

Redis does not roll a script back when it fails halfway, so every script reads
and checks first and writes last. Numbers handed to ``redis.call`` are formatted
by Redis with full precision (integers below 2^53 stay exact; no timestamp here
is above that: ms and µs, not ns, take part in arithmetic, ns only pass through
as strings). A stored message is ``"<tokens> <bytes> <json>"``: a script reads
the sizes of the messages it trims without decoding them.

Keys (``P`` = the key prefix, ``S`` = the session's self-delimiting id, see
``redis_store.session_member``): ``P s:S`` hash of the session (last, count,
tokens, bytes, epoch, created, updated, touched), ``P m:S`` list of its
messages, oldest first, ``P i:S:<key>`` an idempotency key ("epoch first count
created_ms"), ``P t:<tenant>`` the tenant's session ids (zset, by id),
``P c:<tenant>`` and ``P counters`` trimmed/expired counts (hash), ``P expiry``
every session by the time it expires (zset, ms; +inf without a TTL),
``P epoch`` the last epoch handed out.
"""

from __future__ import annotations

# KEYS: meta, msgs, tenant index, expiry, epoch, tenant counters, counters, idempotency key
# ARGV: session id, expiry member, now_ns, now_ms, session ttl ms (0: none), key ttl ms,
#       max messages, max tokens, has key ("1"/"0"), native ttl ms, now_us, messages...
APPEND = """
local meta, msgs, index, expiry, epochs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now_ms, ttl, key_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, max_tokens = tonumber(ARGV[7]), tonumber(ARGV[8])
local FIRST_MESSAGE = 12
local function bump(field, n)
  if n > 0 then
    redis.call('HINCRBY', KEYS[6], field, n)
    redis.call('HINCRBY', KEYS[7], field, n)
  end
end
local function sizes(item)
  local t, b = string.match(item, '^(%d+) (%d+) ')
  return tonumber(t), tonumber(b)
end

local s = redis.call('HMGET', meta, 'last', 'epoch', 'touched', 'count', 'tokens', 'bytes')
local last = tonumber(s[1])
if last and ttl > 0 and tonumber(s[3]) + ttl <= now_ms then
  -- idle past its TTL, not swept yet: it expires now, and a new session starts
  bump('expired_sessions', 1)
  bump('expired_messages', tonumber(s[4]))
  redis.call('DEL', meta, msgs)
  redis.call('ZREM', expiry, ARGV[2])
  last = nil
elseif not last then
  -- Redis expired it by itself (no sweeper ran in time): count it before it starts anew
  local due = redis.call('ZSCORE', expiry, ARGV[2])
  if due and tonumber(due) <= now_ms then bump('expired_sessions', 1) end
end

local epoch, count, tokens, bytes
if last then
  epoch, count, tokens, bytes = tonumber(s[2]), tonumber(s[4]), tonumber(s[5]), tonumber(s[6])
  if ARGV[9] == '1' then
    local seen = redis.call('GET', KEYS[8])
    if seen then
      local e, first, n, at = string.match(seen, '^(%d+) (%d+) (%d+) (%d+)$')
      if tonumber(e) == epoch and tonumber(at) + key_ttl > now_ms then
        return {1, epoch, tonumber(first), tonumber(n)}
      end
    end
  end
else
  if redis.call('EXISTS', epochs) == 0 then redis.call('SET', epochs, ARGV[11]) end
  epoch = redis.call('INCR', epochs)
  last, count, tokens, bytes = 0, 0, 0, 0
  redis.call('HSET', meta, 'epoch', epoch, 'created', ARGV[3])
  redis.call('ZADD', index, 0, ARGV[1])
end

local first = last + 1
for i = FIRST_MESSAGE, #ARGV do
  local t, b = sizes(ARGV[i])
  tokens, bytes = tokens + t, bytes + b
  redis.call('RPUSH', msgs, ARGV[i])
end
local n = #ARGV - FIRST_MESSAGE + 1
last, count = last + n, count + n
local trimmed = 0
while count > 0 and (count > window or tokens > max_tokens) do
  local t, b = sizes(redis.call('LPOP', msgs))
  tokens, bytes, count, trimmed = tokens - t, bytes - b, count - 1, trimmed + 1
end
bump('trimmed_messages', trimmed)
redis.call('HSET', meta, 'last', last, 'count', count, 'tokens', tokens, 'bytes', bytes,
           'updated', ARGV[3], 'touched', now_ms)
if ttl > 0 then
  redis.call('PEXPIRE', meta, ARGV[10])
  redis.call('PEXPIRE', msgs, ARGV[10])
  redis.call('ZADD', expiry, now_ms + ttl, ARGV[2])
else
  redis.call('PERSIST', meta)
  redis.call('PERSIST', msgs)
  redis.call('ZADD', expiry, '+inf', ARGV[2])
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[8], string.format('%d %d %d %d', epoch, first, n, now_ms), 'PX', key_ttl)
end
return {0, epoch, first, n}
"""

# KEYS: meta, msgs. ARGV: now_ms, session ttl ms, limit, after.
# Returns {last, count, epoch, newest messages} ({0, 0, 0, {}}: no live session).
HISTORY = """
local s = redis.call('HMGET', KEYS[1], 'last', 'count', 'epoch', 'touched')
local last, ttl = tonumber(s[1]), tonumber(ARGV[2])
if not last or (ttl > 0 and tonumber(s[4]) + ttl <= tonumber(ARGV[1])) then return {0, 0, 0, {}} end
local count = tonumber(s[2])
local take = math.min(tonumber(ARGV[3]), count, math.max(last - tonumber(ARGV[4]), 0))
local items = {}
if take > 0 then items = redis.call('LRANGE', KEYS[2], -take, -1) end
return {last, count, tonumber(s[3]), items}
"""

# KEYS: meta, msgs, tenant index, expiry. ARGV: session id, member, now_ms, session ttl ms.
# Returns the deleted message count, -1 when there is no live session.
DELETE = """
local s = redis.call('HMGET', KEYS[1], 'count', 'touched')
local ttl = tonumber(ARGV[4])
if not s[1] or (ttl > 0 and tonumber(s[2]) + ttl <= tonumber(ARGV[3])) then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return tonumber(s[1])
"""

# KEYS: meta, msgs, tenant index, expiry, tenant counters, counters.
# ARGV: session id, member, now_ms, session ttl ms.
# Expires one session if it is still due; its message count, -1 when it was not due.
EXPIRE = """
local now_ms, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZSCORE', KEYS[4], ARGV[2])
if not due or tonumber(due) > now_ms then return -1 end
local s = redis.call('HMGET', KEYS[1], 'count', 'touched')
if s[2] and tonumber(s[2]) + ttl > now_ms then
  redis.call('ZADD', KEYS[4], tonumber(s[2]) + ttl, ARGV[2])
  return -1
end
local count = tonumber(s[1]) or 0
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
for _, key in ipairs({KEYS[5], KEYS[6]}) do
  redis.call('HINCRBY', key, 'expired_sessions', 1)
  if count > 0 then redis.call('HINCRBY', key, 'expired_messages', count) end
end
return count
"""
