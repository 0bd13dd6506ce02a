-- PUT /api/v1/payments/:id/status along valid transitions only. BENCH_IDS holds
-- pending payments; each thread walks its own slice in order, moving each payment
-- pending -> processing. Should a slice run out, the next pass moves the same
-- payments processing -> completed, then completed -> refunded (all valid), so a
-- run never sends an invalid transition; bench/wrk.py reports the passes used.
local common = require("common")
local threads = {}
function setup(thread)
  common.setup(thread)
  threads[#threads + 1] = thread
end

local NEXT = { "processing", "completed", "refunded" }
local slice, i, pass = {}, 0, 1
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  local all = common.lines(assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set"))
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  for k = tid + 1, #all, nthreads do slice[#slice + 1] = all[k] end
  assert(#slice > 0, "no pending payments for thread " .. tid)
end

function request()
  i = i + 1
  if i > #slice then
    i, pass = 1, pass + 1
  end
  passes = pass -- read back by done() through thread:get
  local status = NEXT[pass] or "refunded" -- past 3 passes: a same-status no-op (200, no event)
  return wrk.format("PUT", "/api/v1/payments/" .. slice[i] .. "/status", headers,
    '{"status":"' .. status .. '"}')
end

function done(summary, latency, requests)
  local most = 1
  for _, t in ipairs(threads) do
    local p = t:get("passes")
    if p and p > most then most = p end
  end
  io.write(string.format('BENCH_PASSES %d\n', most))
  common.done(summary, latency, requests)
end
