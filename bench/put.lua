-- PUT 4 KiB settings under random instance ids, with the admin's basic auth.
package.path = os.getenv("BENCH_DIR") .. "/?.lua;" .. package.path
local instances = tonumber(os.getenv("BENCH_INSTANCES"))
local auth = "Basic " .. os.getenv("BENCH_AUTH")
local body = '{"agent_id":"agent-bench","env":{"pad":"' .. string.rep("p", 4000) .. '"}}'
math.randomseed(os.time() + 1)

request = function()
  return wrk.format("PUT", "/instances/vm-" .. math.random(0, instances - 1) .. "/settings",
    {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
end

done = require("report")
