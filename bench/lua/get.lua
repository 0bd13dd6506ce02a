-- GET a random id's resource: BENCH_PATH is a template with one %s (e.g.
-- /api/v1/users/%s), BENCH_IDS a file of ids. Without BENCH_IDS the URL's own
-- path is requested (the bare baseline).
local common = require("common")
setup = common.setup
done = common.done

local ids, template

function init(args)
  common.seed()
  local file = os.getenv("BENCH_IDS")
  if file and #file > 0 then
    ids = common.lines(file)
    template = assert(os.getenv("BENCH_PATH"), "BENCH_PATH is not set")
  end
end

function request()
  if not ids then return wrk.request() end
  return wrk.format("GET", string.format(template, ids[math.random(#ids)]))
end
