-- Shared by the bench's wrk scripts (found through LUA_PATH=bench/lua/?.lua).
-- done() prints one machine-readable line that bench/wrk.py parses.
local M = {}

-- Lines of a file (ids, one a line); an error when the file is missing or empty.
function M.lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. tostring(path))
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  assert(#out > 0, "no ids in " .. path)
  return out
end

-- Each thread gets a distinct id (0, 1, ...) and its own random seed.
local counter = 0
function M.setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function M.seed()
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, latency.stdev))
end

return M
