-- A request for a random id (ids in BENCH_IDS): BENCH_METHOD (default GET), BENCH_PATH a template
-- with one %s (/api/v1/users/%s), BENCH_BODY another or none. Without BENCH_IDS, the URL itself (the
-- bare baseline).
local common = require("common") -- and wrk's setup() and done()
local ids, method, path, body

function init(args)
  common.init()
  local file = os.getenv("BENCH_IDS")
  if file and #file > 0 then ids = common.lines(file) end
  method, path, body = os.getenv("BENCH_METHOD") or "GET", os.getenv("BENCH_PATH"), os.getenv("BENCH_BODY")
end

function request()
  common.key()
  if not ids then return wrk.format() end
  local id = ids[math.random(#ids)]
  return wrk.format(method, string.format(path, id), nil, body and #body > 0 and string.format(body, id) or nil)
end
