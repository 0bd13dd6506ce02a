-- POST /api/v1/payments for a random existing user (ids in BENCH_IDS).
local common = require("common")
setup, done = common.setup, common.done
local users

function init(args)
  common.init()
  users = common.lines(assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set"))
end

function request()
  common.key()
  local body = string.format('{"user_id":"%s","amount":"%d.%02d","currency":"USD","description":"bench"}',
    users[math.random(#users)], math.random(1, 500), math.random(0, 99))
  return wrk.format("POST", "/api/v1/payments", nil, body)
end
