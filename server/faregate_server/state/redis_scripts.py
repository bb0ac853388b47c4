"""The Lua scripts that make Redis state atomic across replicas.

Each reserve, commit and release runs as one script, so Redis applies it whole
with nothing in between, whatever the number of replicas. Keys:

    {ns}:budget:<key>      hash  used, reserved, window[, obase, olimit]
    {ns}:pool:<name>       hash  used, reserved, window
    {ns}:hold:<id>         hash  account key -> units held by one request;
                                 after its lease lapsed: only `_reaped`
    {ns}:leases            zset  hold key -> expiry (ms, Redis's clock)
    {ns}:ledger            stream of spend records (bounded, approximately)
    {ns}:request:<id>      hash  state (inflight|done), owner, fingerprint,
                                 result, remaining
    {ns}:done:<id>         string  a commit already written (<id> is its hold's)

`{ns}` is a cluster hash tag: every key of a deployment lives in one slot, so
a script may touch any of them. An account's `window` is the start of the
window its `used` counts; a caller passing a later start rolls it over. An
operator's limit override (`olimit`) holds while the configured limit stays
`obase`. Reservations carry leases: whichever script runs next after a lease
expires (a reserve, or the renewal loop of any replica) returns its units and
leaves the hold marked `_reaped` for an hour.

A commit may be sent twice: a reply lost to a timeout gets it queued and
written again once Redis answers. It counts once: every commit leaves a
`done` marker for an hour, and a commit that finds its marker was written
before. A missing hold proves nothing (a Redis restarted without its data
has none), so a commit never depends on finding its hold: it is charged
and recorded whatever its hold still holds.

Numbers are Lua doubles: exact for integers up to 2^53, which bounds every
limit (faregate refuses larger ones for this backend).
"""

from __future__ import annotations

# Shared by the scripts below: the clock, rolling an account's window, and
# returning the units of expired leases.
_INT = """
-- Integers go to Redis as exact decimal strings, never in a double's
-- exponent form.
local function int(x)
  return string.format('%d', x)
end
"""

_COMMON = (
    _INT
    + """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Reads an account, starting its window afresh when `window` is later;
-- returns used, reserved and the limit in force.
local function account(key, limit, window)
  local a = redis.call('HMGET', key, 'used', 'reserved', 'window', 'obase', 'olimit')
  local used = tonumber(a[1] or '0')
  local reserved = tonumber(a[2] or '0')
  if a[3] == false or tonumber(a[3]) < tonumber(window) then
    used = 0
    redis.call('HSET', key, 'used', '0', 'window', window)
  end
  if a[4] ~= false and tonumber(a[4]) == tonumber(limit) then
    limit = tonumber(a[5])
  end
  return used, reserved, tonumber(limit)
end

-- Returns a hold's units to its accounts, except those in `keep`.
local function unhold(hold, keep)
  local fields = redis.call('HGETALL', hold)
  for j = 1, #fields, 2 do
    if fields[j] ~= '_reaped' and not keep[fields[j]] then
      redis.call('HINCRBY', fields[j], 'reserved', int(-tonumber(fields[j + 1])))
    end
  end
end

local function reap(leases, now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 64)
  for _, hold in ipairs(expired) do
    unhold(hold, {})
    redis.call('DEL', hold)
    redis.call('HSET', hold, '_reaped', '1')
    redis.call('PEXPIRE', hold, 3600000)
    redis.call('ZREM', leases, hold)
  end
  return #expired
end
"""
)

RESERVE = (
    _COMMON
    + """
-- KEYS: leases, hold, account...   ARGV: lease_ms, then amount, limit, window per account
-- Returns {0, index, remaining} when account `index` lacks room (nothing held),
-- else {1, used, reserved, ...} per account after holding.
local now = now_ms()
reap(KEYS[1], now)
local n = #KEYS - 2
local state = {}
for i = 1, n do
  local amount = tonumber(ARGV[3 * i - 1])
  local used, reserved, limit = account(KEYS[i + 2], ARGV[3 * i], ARGV[3 * i + 1])
  if amount > limit - used - reserved then
    return {0, i, limit - used - reserved}
  end
  state[i] = {used, reserved + amount}
end
local result = {1}
for i = 1, n do
  local amount = ARGV[3 * i - 1]
  redis.call('HINCRBY', KEYS[i + 2], 'reserved', amount)
  redis.call('HINCRBY', KEYS[2], KEYS[i + 2], amount)
  table.insert(result, state[i][1])
  table.insert(result, state[i][2])
end
redis.call('ZADD', KEYS[1], int(now + tonumber(ARGV[1])), KEYS[2])
return result
"""
)

COMMIT = (
    _COMMON
    + """
-- KEYS: leases, hold, done marker, ledger, request, account...
-- ARGV: n_budgets, max_records, result_ttl_ms, fingerprint, result,
--       then actual, limit, window per account, then the record's field/value pairs.
-- The hold gives back what it still holds: nothing when its lease expired
-- (returned already), when it was held on the emergency allowance, or when
-- Redis lost it (restarted empty, or from an older snapshot). The spend,
-- the ledger record and the result are written all the same.
-- Returns {least remaining of the budgets, used, reserved per account...,
-- then the limit in force per budget}, or {'written'} for a commit that was
-- written before.
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', 3600000) then return {'written'} end
local n = #KEYS - 5
local n_budgets = tonumber(ARGV[1])
local least = nil
local result = {0}
local limits = {}
for i = 1, n do
  local key = KEYS[i + 5]
  local held = tonumber(redis.call('HGET', KEYS[2], key) or '0')
  local actual = tonumber(ARGV[3 * i + 3])
  local used, reserved, limit = account(key, ARGV[3 * i + 4], ARGV[3 * i + 5])
  redis.call('HINCRBY', key, 'reserved', int(-held))
  redis.call('HINCRBY', key, 'used', int(actual))
  used = used + actual
  reserved = reserved - held
  if i <= n_budgets and (least == nil or limit - used - reserved < least) then
    least = limit - used - reserved
  end
  if i <= n_budgets then table.insert(limits, limit) end
  table.insert(result, used)
  table.insert(result, reserved)
end
-- Units held on a pool a reload removed since go back all the same.
local given = {}
for i = 1, n do given[KEYS[i + 5]] = true end
unhold(KEYS[2], given)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
local record = {}
for j = 3 * n + 6, #ARGV do table.insert(record, ARGV[j]) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', unpack(record))
result[1] = least
for _, limit in ipairs(limits) do table.insert(result, limit) end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[5], 'state', 'done', 'fingerprint', ARGV[4],
    'result', ARGV[5], 'remaining', int(least))
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
return result
"""
)

RELEASE = (
    _COMMON
    + """
-- KEYS: leases, hold. Returns the hold's units to its accounts.
unhold(KEYS[2], {})
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
return 1
"""
)

RENEW = (
    _COMMON
    + """
-- KEYS: leases. ARGV: lease_ms, then hold keys, '', then claimed request keys.
-- Extends this replica's leases and in-flight claims (never a kept result's
-- lifetime), and returns expired holds' units.
local now = now_ms()
local lease_ms = tonumber(ARGV[1])
local claims = false
for j = 2, #ARGV do
  if ARGV[j] == '' then
    claims = true
  elseif claims then
    if redis.call('HGET', ARGV[j], 'state') == 'inflight' then
      redis.call('PEXPIRE', ARGV[j], lease_ms)
    end
  else
    redis.call('ZADD', KEYS[1], 'XX', int(now + lease_ms), ARGV[j])
  end
end
return reap(KEYS[1], now)
"""
)

CLAIM = """
-- KEYS: request. ARGV: fingerprint, lease_ms, owner.
-- Returns {'claimed'}, {'inflight'} or {'done', fingerprint, result, remaining}.
local r = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'result', 'remaining')
if r[1] == 'done' then return {'done', r[2], r[3], r[4]} end
if r[1] == 'inflight' then return {'inflight'} end
redis.call('HSET', KEYS[1], 'state', 'inflight', 'fingerprint', ARGV[1], 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'claimed'}
"""

UNCLAIM = """
-- KEYS: request. ARGV: owner. Frees the owner's claim of an id still in
-- flight; a served one keeps its result, and another request's claim stays.
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'inflight' and r[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

READ_ACCOUNT = (
    _COMMON
    + """
-- KEYS: account. ARGV: limit, window. Returns {used, reserved, limit in force}.
local used, reserved, limit = account(KEYS[1], ARGV[1], ARGV[2])
return {used, reserved, limit}
"""
)

UPDATE_BUDGET = (
    _COMMON
    + """
-- KEYS: budget. ARGV: configured limit, window, change (limit|top_up|reset), amount.
local used, reserved, limit = account(KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == 'limit' then
  redis.call('HSET', KEYS[1], 'obase', ARGV[1], 'olimit', ARGV[4])
elseif ARGV[3] == 'top_up' then
  redis.call('HSET', KEYS[1], 'obase', ARGV[1], 'olimit', int(limit + tonumber(ARGV[4])))
else
  redis.call('HSET', KEYS[1], 'used', '0')
end
return 1
"""
)
