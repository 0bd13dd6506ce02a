-- PUT /api/v1/payments/:id/status along valid transitions only. BENCH_IDS holds pending
-- payments; each thread walks its own slice, moving each pending -> processing. Should a
-- slice run out, the next pass moves them processing -> completed, then -> refunded; past
-- that, a same-status no-op (200, no event).
local common = require("common") -- and wrk's setup() and done()
local NEXT = { "processing", "completed", "refunded" }
local slice, i, pass = {}, 0, 1

function init(args)
  common.init()
  local all = common.lines(assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set"))
  for k = tid + 1, #all, tonumber(os.getenv("BENCH_THREADS") or "1") do slice[#slice + 1] = all[k] end
  assert(#slice > 0, "no pending payments for thread " .. tid)
end

function request()
  common.key()
  i = i + 1
  if i > #slice then i, pass = 1, pass + 1 end
  local body = '{"status":"' .. (NEXT[pass] or "refunded") .. '"}'
  return wrk.format("PUT", "/api/v1/payments/" .. slice[i] .. "/status", nil, body)
end
