-- wrk script: authenticated POST /v1/views from a pool of prepared requests; one JSON summary.
-- Usage: wrk -s views.lua <url> -- <pool file: one "token<TAB>body" line per request>
-- The pool (loadtest/requests.py) holds varied valid bodies of many viewers; requests are
-- formatted once in init, so the script costs wrk next to nothing per request.

local threads = 0
local prepared = {}
local next_index = 1

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    prepared[#prepared + 1] = wrk.format("POST", "/v1/views", {
      ["Authorization"] = "Bearer " .. line:sub(1, tab - 1),
      ["Content-Type"] = "application/json",
    }, line:sub(tab + 1))
  end
  -- Threads start at different places in the pool.
  next_index = (thread_number * 7919) % #prepared + 1
end

function request()
  local req = prepared[next_index]
  next_index = next_index % #prepared + 1
  return req
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
