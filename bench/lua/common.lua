-- Shared by the wrk scripts (LUA_PATH=bench/lua/?.lua). Every request carries an API key, the
-- baseline's too, so both parse the same head: one of BENCH_KEYS (a file, one a line) at random, as
-- from as many clients, each with its own verdict and rate-limit bucket; else BENCH_KEY. Requiring it
-- sets wrk's setup() and done() hooks: done() prints the line bench/wrk.py reads.
local M = {}
local keys

function M.lines(path) -- ids, one a line
  local out = {}
  for line in assert(io.open(path, "r"), "cannot open " .. tostring(path)):lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

local counter = 0
function setup(thread) -- each thread its own id (tid): 0, 1, ...
  thread:set("tid", counter)
  counter = counter + 1
end

function M.init()
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  local file = os.getenv("BENCH_KEYS")
  keys = (file and #file > 0) and M.lines(file) or { os.getenv("BENCH_KEY") or "" }
  wrk.headers["Content-Type"] = "application/json"
end

function M.key() -- the next request's key (wrk.format reads wrk.headers)
  wrk.headers["Authorization"] = "Bearer " .. keys[math.random(#keys)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,' ..
    '"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

return M
