-- GET a random id's resource: BENCH_PATH is a template with one %s (/api/v1/users/%s),
-- BENCH_IDS a file of ids. Without BENCH_IDS, the URL itself (the bare baseline).
local common = require("common")
setup, done = common.setup, common.done
local ids, template

function init(args)
  common.init()
  local file = os.getenv("BENCH_IDS")
  if file and #file > 0 then
    ids, template = common.lines(file), assert(os.getenv("BENCH_PATH"), "BENCH_PATH is not set")
  end
end

function request()
  common.key()
  if not ids then return wrk.format() end
  return wrk.format("GET", string.format(template, ids[math.random(#ids)]))
end
