-- wrk script: POST /v1/tokens/redeem, every request with a token never redeemed before (a
-- second redeem of a single-use token is a 409). Thread n spends its own slice of tokens,
-- the file SIGND_TOKENS_IN.<n-1>, one compact JWS a line (bench.sh deals them out); the
-- bearer credential (a redeemer) is read from SIGND_CREDENTIAL_FILE so the secret never
-- appears in wrk's argv.
-- Only a 200 whose body says "redeemed":true counts as a redeem; any other answer is
-- counted bad (bench.sh fails the run on one). A thread that has spent its slice stops
-- itself; the connections it still writes on get a GET /healthz, which spends nothing and
-- is not counted. wrk's Requests/sec divides by the whole -d even when its threads stopped
-- early, so the rate is measured here: redeems / (last redeem's response - first request),
-- over all threads, on the monotonic clock (LuaJIT's ffi).
-- Usage: SIGND_CREDENTIAL_FILE=... SIGND_TOKENS_IN=prefix wrk -t2 -s redeem.lua URL
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local f = assert(io.open(os.getenv("SIGND_CREDENTIAL_FILE"), "r"))
local secret = f:read("*l")
f:close()
wrk.headers["Authorization"] = "Bearer " .. secret
wrk.headers["Content-Type"] = "application/json"

-- Main state: one entry per thread, for done().
local threads = {}
local count = 0
function setup(thread)
   count = count + 1
   thread:set("id", count)
   table.insert(threads, thread)
end

-- Thread state.
ok, bad, probes, left, first_t, last_t = 0, 0, 0, 0, 0, 0
bad_status, bad_body = 0, ""
local tokens, n, spent, probe = {}, 0, false, nil
-- wrk calls the first thread's request() once before the run, only to check what it
-- returns (that request is never sent): its token is skipped, and its time not taken.
local verify_call = false
function init(args)
   local name = assert(os.getenv("SIGND_TOKENS_IN")) .. "." .. (id - 1)
   for line in io.lines(name) do
      if #line > 0 then tokens[#tokens + 1] = line end
   end
   probe = wrk.format("GET", "/healthz")
   verify_call = id == 1
end

function request()
   n = n + 1
   local token = tokens[n]
   if token == nil then
      if not spent then
         spent = true
         wrk.thread:stop()
      end
      return probe
   end
   if verify_call then
      verify_call = false
   elseif first_t == 0 then
      first_t = now()
   end
   left = #tokens - n
   return wrk.format("POST", "/v1/tokens/redeem", nil, '{"token":"' .. token .. '"}')
end

function response(status, headers, body)
   if status == 200 and body:find('"redeemed":%s*true') then
      ok = ok + 1
      last_t = now()
   elseif spent and status == 200 and not body:find('"jti"') then
      probes = probes + 1
   else
      bad = bad + 1
      if bad == 1 then bad_status, bad_body = status, body:sub(1, 300) end
   end
end

function done(summary, latency, requests)
   local n_ok, n_bad, n_left, t0, t1, first = 0, 0, 0, nil, 0, nil
   for _, t in ipairs(threads) do
      n_ok = n_ok + t:get("ok")
      n_bad = n_bad + t:get("bad")
      n_left = n_left + t:get("left")
      local a, b = t:get("first_t"), t:get("last_t")
      if a > 0 and (t0 == nil or a < t0) then t0 = a end
      if b > t1 then t1 = b end
      if first == nil and t:get("bad") > 0 then
         first = t:get("bad_status") .. " " .. t:get("bad_body")
      end
   end
   local span = (t0 ~= nil and t1 > t0) and t1 - t0 or 0
   io.write(string.format("bench: redeemed %d bad %d tokens_left %d span_s %.3f redeem_per_s %.1f\n",
      n_ok, n_bad, n_left, span, span > 0 and n_ok / span or 0))
   if first then io.write("bench: first bad response: " .. first .. "\n") end
   io.write(string.format("bench: latency_p50_ms %.2f p99_ms %.2f\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
