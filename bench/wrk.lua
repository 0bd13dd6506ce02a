-- wrk's script for every run of bench/wrk.py; done() prints the line wrk.py reads. Every request
-- carries an API key, the baseline's too, so both parse the same head: one of BENCH_KEYS (a file,
-- one a line) at random, as from as many clients, each with its own verdict and rate-limit bucket.
-- Without BENCH_IDS (a file of ids), the URL itself (the bare baseline). With them, a random id
-- for BENCH_METHOD and BENCH_PATH, a template with one %s (/api/v1/users/%s), BENCH_BODY another
-- or empty; or, with BENCH_WALK set, PUT /api/v1/payments/:id/status along valid transitions
-- only: the ids are pending payments and each thread walks its own slice, moving each pending ->
-- processing. Should a slice run out, the next pass moves them processing -> completed, then ->
-- refunded; past that, a same-status no-op (200, no event).
local NEXT = { "processing", "completed", "refunded" }
local keys, ids, method, path, body, walk
local counter, i, pass = 0, 0, 1

local function lines(file)
  local out = {}
  for line in assert(io.open(file, "r"), "cannot open " .. tostring(file)):lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

function setup(thread) -- each thread its own id (tid): 0, 1, ...
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
  keys = lines(os.getenv("BENCH_KEYS"))
  wrk.headers["Content-Type"] = "application/json"
  method, path, body = os.getenv("BENCH_METHOD"), os.getenv("BENCH_PATH"), os.getenv("BENCH_BODY")
  local file = os.getenv("BENCH_IDS")
  if file and #file > 0 then ids = lines(file) end
  if os.getenv("BENCH_WALK") then -- this thread's slice
    walk = {}
    for k = tid + 1, #ids, tonumber(os.getenv("BENCH_THREADS")) do walk[#walk + 1] = ids[k] end
    assert(#walk > 0, "no pending payments for thread " .. tid)
  end
end

function request()
  wrk.headers["Authorization"] = "Bearer " .. keys[math.random(#keys)]
  if walk then
    i = i + 1
    if i > #walk then i, pass = 1, pass + 1 end
    local status = '{"status":"' .. (NEXT[pass] or "refunded") .. '"}'
    return wrk.format("PUT", "/api/v1/payments/" .. walk[i] .. "/status", nil, status)
  end
  if not ids then return wrk.format() end
  local id = ids[math.random(#ids)]
  return wrk.format(method, string.format(path, id), nil, #body > 0 and string.format(body, id) or nil)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,' ..
    '"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
