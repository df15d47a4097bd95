-- GET the settings of a random stored instance, with the admin's basic auth.
package.path = os.getenv("BENCH_DIR") .. "/?.lua;" .. package.path
local instances = tonumber(os.getenv("BENCH_INSTANCES"))
local auth = "Basic " .. os.getenv("BENCH_AUTH")
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/instances/vm-" .. math.random(0, instances - 1) .. "/settings", {["Authorization"] = auth})
end

done = require("report")
