-- wrk script: POST /v1/tokens with the bearer credential read from a file, so the secret
-- never appears in wrk's argv. Usage: SIGND_CREDENTIAL_FILE=... wrk -s mint.lua URL
local f = assert(io.open(os.getenv("SIGND_CREDENTIAL_FILE"), "r"))
local secret = f:read("*l")
f:close()
wrk.method = "POST"
wrk.path = "/v1/tokens"
wrk.headers["Authorization"] = "Bearer " .. secret
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"sub":"video-42","ttl":600,"claims":{"downloadable":false,"accessRules":[{"type":"any","action":"allow"}]}}'

local errors = 0
response = function(status, headers, body)
   if status ~= 200 then errors = errors + 1 end
end

done = function(summary, latency, requests)
   io.write(string.format("bench: requests %d non2xx_seen_by_thread0 %d\n", summary.requests, errors))
   io.write(string.format("bench: latency_p50_ms %.2f p99_ms %.2f\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
