-- POST /api/v1/payments/:id/refunds of 0.01 from a random completed payment (ids in BENCH_IDS):
-- each holds thousands of cents, so a run never runs out of what is left.
local common = require("common")
setup, done = common.setup, common.done
local payments

function init(args)
  common.init()
  payments = common.lines(assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set"))
end

function request()
  common.key()
  local path = "/api/v1/payments/" .. payments[math.random(#payments)] .. "/refunds"
  return wrk.format("POST", path, nil, '{"amount":"0.01","reason":"requested_by_customer"}')
end
