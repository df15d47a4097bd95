-- GET the settings of a random instance among BENCH_INSTANCES, each with that VM's own credential
-- (a line "vm-N <base64 of vm-N:token>" per instance in BENCH_CREDENTIALS), as agents read them.
package.path = os.getenv("BENCH_DIR") .. "/?.lua;" .. package.path
local paths, headers = {}, {}
for line in io.lines(os.getenv("BENCH_CREDENTIALS")) do
  local id, auth = line:match("^(%S+) (%S+)$")
  paths[#paths + 1] = "/instances/" .. id .. "/settings"
  headers[#headers + 1] = {["Authorization"] = "Basic " .. auth}
end
math.randomseed(os.time())

request = function()
  local n = math.random(1, #paths)
  return wrk.format("GET", paths[n], headers[n])
end

done = require("report")
