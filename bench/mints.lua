-- wrk script for bench/mints.sh: POSTs one JSON body with a Bearer agent key
-- (both from the environment) and prints the summary as one JSON line at the end.
--   BENCH_MINT_PATH   request path (default /v1/credentials/read)
--   BENCH_MINT_KEY    the agent key (ak_…); empty for an unauthenticated GET peer
--   BENCH_MINT_BODY   the JSON body; empty for a GET
local path = os.getenv("BENCH_MINT_PATH") or "/v1/credentials/read"
local key = os.getenv("BENCH_MINT_KEY") or ""
local body = os.getenv("BENCH_MINT_BODY") or ""

wrk.path = path
if body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
else
  wrk.method = "GET"
end
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
