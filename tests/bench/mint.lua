-- wrk script: POST /v1/tokens with the bearer credential read from a file, so the secret
-- never appears in wrk's argv. Usage: SIGND_CREDENTIAL_FILE=... wrk -s mint.lua URL
local f = assert(io.open(os.getenv("SIGND_CREDENTIAL_FILE"), "r"))
local secret = f:read("*l")
f:close()
wrk.method = "POST"
wrk.path = "/v1/tokens"
wrk.headers["Authorization"] = "Bearer " .. secret
wrk.headers["Content-Type"] = "application/json"
-- No response() function: wrk would then copy every response's headers and body into Lua,
-- client work that is not the appliance's. bench.sh fails the run on wrk's own "Non-2xx".
wrk.body = '{"sub":"video-42","ttl":600,"claims":{"downloadable":false,"accessRules":[{"type":"any","action":"allow"}]}}'

done = function(summary, latency, requests)
   io.write(string.format("bench: latency_p50_ms %.2f p99_ms %.2f\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
