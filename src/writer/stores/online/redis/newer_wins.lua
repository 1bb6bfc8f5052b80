-- Newest wins, many entities per call (docs/online-store.md).
-- KEYS: the entities' hashes, all in one hash slot on a cluster.
-- ARGV[1]: a MessagePack array, for each key in turn: pkey, ttl seconds
-- (0: none), n, then n distinct (field, value, field_ts, ts) quadruples.
-- A feature is set only when its observation is newer: the larger ts wins,
-- an equal ts goes to the larger value. Returns the 1-based indexes of the
-- keys that hold another type (left untouched).
-- Globals are read once into locals: a global lookup costs a metatable hop.
local KEYS, tonumber, unpack, call, pcall, find = KEYS, tonumber, unpack, redis.call, redis.pcall, string.find
local A = cmsgpack.unpack(ARGV[1])
-- Reused for every key: a table per key costs more than the writes.
local names, set, wrong = {}, {'__id__', false}, {}
local a = 1
for k = 1, #KEYS do
  local key, ttl, n = KEYS[k], A[a + 1], A[a + 2]
  local q = a + 3
  set[2] = A[a]
  a = q + 4 * n
  for j = 1, n do names[j] = A[q + 4 * j - 2] end
  local cur = pcall('HMGET', key, unpack(names, 1, n))
  if cur.err then
    if find(cur.err, 'WRONGTYPE', 1, true) ~= 1 then return cur end
    wrong[#wrong + 1] = k
  else
    local m = 2
    for j = 1, n do
      local i, c = q + 4 * j - 4, cur[j]
      local newer = not c
      if not newer then
        local ts, cts = tonumber(A[i + 3]), tonumber(c)
        newer = cts < ts
        if (not newer) and cts == ts then
          local v = call('HGET', key, A[i])
          newer = (not v) or v < A[i + 1]
        end
      end
      if newer then
        set[m + 1], set[m + 2], set[m + 3], set[m + 4] = A[i], A[i + 1], A[i + 2], A[i + 3]
        m = m + 4
      end
    end
    call('HSET', key, unpack(set, 1, m))
    if ttl > 0 and call('TTL', key) < ttl then call('EXPIRE', key, ttl) end
  end
end
return wrong
