-- wrk script for bench/gateway.py: POST one JSON body, print the results as one JSON line.
--
--   WRK_BODY_FILE=body.json [WRK_AUTHORIZATION="Bearer igw_..."] [WRK_COUNT_HEADER=name] \
--     wrk -t2 -c8 -d5s -s bench/wrk_post.lua URL
--
-- or the body file and Authorization value as arguments after `--`: BODY_FILE [AUTHORIZATION].
-- The key travels in the environment by default so that it does not show in `ps`.
--
-- done() prints one line starting with "WRK_JSON " and holding latency percentiles in
-- microseconds, requests, duration, requests/s and wrk's error counts (errors.status is
-- "Non-2xx or 3xx responses": wrk counts status > 399). With WRK_COUNT_HEADER set (in the
-- environment only: wrk decides whether to parse response headers from its main Lua state,
-- where init() never runs), each thread also tallies that response header's values (e.g.
-- x-inference-route) and the status codes; off by default, since a response() callback
-- costs wrk some time on every response.

local threads = {}
local count_header = os.getenv("WRK_COUNT_HEADER")
if count_header == "" then
  count_header = nil
end
-- globals: done() reads them from each thread through thread:get()
tally = {}
statuses = {}

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open body file " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

local function arg_or_env(args, i, name)
  local value = args[i]
  if value == nil or value == "" then
    value = os.getenv(name)
  end
  if value == "" then
    return nil
  end
  return value
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local body_file = arg_or_env(args, 1, "WRK_BODY_FILE")
  local authorization = arg_or_env(args, 2, "WRK_AUTHORIZATION")
  wrk.method = "POST"
  wrk.body = read_file(body_file)
  wrk.headers["Content-Type"] = "application/json"
  if authorization then
    wrk.headers["Authorization"] = authorization
  end
end

if count_header then
  count_header = string.lower(count_header)
  function response(status, headers, body)
    local value = headers[count_header]
    if value == nil then
      for name, v in pairs(headers) do
        if string.lower(name) == count_header then
          value = v
          break
        end
      end
    end
    value = value or "(none)"
    tally[value] = (tally[value] or 0) + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

local function json_string(s)
  return '"' .. string.gsub(tostring(s), '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

local function merged(name)
  local counts = {}
  for _, thread in ipairs(threads) do
    local t = thread:get(name)
    if type(t) == "table" then
      for value, n in pairs(t) do
        counts[value] = (counts[value] or 0) + n
      end
    end
  end
  local parts = {}
  for value, n in pairs(counts) do
    table.insert(parts, json_string(value) .. ":" .. n)
  end
  return table.concat(parts, ",")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"requests":%d,"duration_us":%d,"requests_per_s":%.2f,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"header_counts":{%s},"status_counts":{%s}}\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6), summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, merged("tally"), merged("statuses")))
end
