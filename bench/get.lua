-- GET the settings of a random stored instance, with the admin's basic auth.
local instances = tonumber(os.getenv("BENCH_INSTANCES"))
local auth = "Basic " .. os.getenv("BENCH_AUTH")
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/instances/vm-" .. math.random(0, instances - 1) .. "/settings", {["Authorization"] = auth})
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("BENCH %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), errors, summary.errors.status))
end
