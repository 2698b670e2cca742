-- wrk script: POST /v1/tokens with the body in SIGND_MINT_BODY and the bearer credential
-- read from SIGND_CREDENTIAL_FILE (so the secret never appears in wrk's argv). Every minted
-- token is written, one a line, to SIGND_TOKENS_OUT.<thread number> (1, 2, ...): the
-- single-use tokens a later redeem run spends. Every response is counted in every thread
-- (mint.lua counts thread 0's only), and done() prints the totals.
-- Usage: SIGND_CREDENTIAL_FILE=... SIGND_MINT_BODY='{...}' SIGND_TOKENS_OUT=prefix \
--        wrk -s mint_tokens.lua URL
local f = assert(io.open(os.getenv("SIGND_CREDENTIAL_FILE"), "r"))
local secret = f:read("*l")
f:close()
wrk.method = "POST"
wrk.path = "/v1/tokens"
wrk.headers["Authorization"] = "Bearer " .. secret
wrk.headers["Content-Type"] = "application/json"
wrk.body = assert(os.getenv("SIGND_MINT_BODY"), "SIGND_MINT_BODY is not set")

-- Main state: one entry per thread, for done().
local threads = {}
local count = 0
function setup(thread)
   count = count + 1
   thread:set("id", count)
   table.insert(threads, thread)
end

-- Thread state.
ok, bad, bad_status, bad_body = 0, 0, 0, ""
-- The bad answers that were 503 (busy, try again): tolerated where bench.sh says so.
busy = 0
local out
function init(args)
   out = assert(io.open(assert(os.getenv("SIGND_TOKENS_OUT")) .. "." .. id, "w"))
   -- Fully buffered; flushed when wrk exits (bench.sh checks the line count against ok).
   out:setvbuf("full", 1048576)
end

function response(status, headers, body)
   local token = status == 200 and body:match('"token":%s*"([^"]+)"')
   if token then
      ok = ok + 1
      out:write(token, "\n")
   else
      bad = bad + 1
      if status == 503 then busy = busy + 1 end
      if bad == 1 then bad_status, bad_body = status, body:sub(1, 300) end
   end
end

function done(summary, latency, requests)
   local n_ok, n_bad, n_busy, first = 0, 0, 0, nil
   for _, t in ipairs(threads) do
      n_ok = n_ok + t:get("ok")
      n_bad = n_bad + t:get("bad")
      n_busy = n_busy + t:get("busy")
      if first == nil and t:get("bad") > 0 then
         first = t:get("bad_status") .. " " .. t:get("bad_body")
      end
   end
   io.write(string.format("bench: minted %d bad %d\n", n_ok, n_bad))
   io.write(string.format("bench: bad_503 %d\n", n_busy))
   if first then io.write("bench: first bad response: " .. first .. "\n") end
   io.write(string.format("bench: latency_p50_ms %.2f p99_ms %.2f\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
