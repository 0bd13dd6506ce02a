-- POST /api/v1/users with an email unique to this run (BENCH_NONCE), thread and request.
local common = require("common")
setup = common.setup
done = common.done

local nonce, n = "", 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  common.seed()
  nonce = os.getenv("BENCH_NONCE") or tostring(os.time())
end

function request()
  n = n + 1
  local body = string.format('{"email":"bench-%s-%d-%d@example.com","name":"Bench User %d"}', nonce, tid, n, n)
  return wrk.format("POST", "/api/v1/users", headers, body)
end
