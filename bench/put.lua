-- PUT 4 KiB settings under random instance ids, with the admin's basic auth.
local instances = tonumber(os.getenv("BENCH_INSTANCES"))
local auth = "Basic " .. os.getenv("BENCH_AUTH")
local body = '{"agent_id":"agent-bench","env":{"pad":"' .. string.rep("p", 4000) .. '"}}'
math.randomseed(os.time() + 1)

request = function()
  return wrk.format("PUT", "/instances/vm-" .. math.random(0, instances - 1) .. "/settings",
    {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("BENCH %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), errors, summary.errors.status))
end
