#!/usr/bin/env bash
# `make bench`: the appliance over HTTPS against the raw token, measured side by side.
#   - signed JWTs/s over HTTPS keep-alive (wrk, 2 threads, 64 connections) vs the raw
#     2-thread C_SignInit+C_Sign loop on the same token, the ratio (bar >= 0.90), p50/p99;
#   - the cost of the privilege separation in CPU per token (front + keeper against the
#     raw loop); the in-process comparison (process_model = single) left with issue 23;
#   - the cost of per-signature auditing: the same wrk JWT run (split) with
#     audit_every_signature = true (one "sign" event per token, group-committed before the
#     response) right after the default run (signatures only counted), in the same round,
#     its p50/p99 and the ratio per-signature / counts only;
#   - the cost of 200 revocation event-stream subscribers: the same wrk JWT run (split)
#     with 200 subscribers connected (tests/bench/subscribers.py), in the same round, and
#     the ratio with / without (bar >= 0.90);
#   - revocation propagation: from the 200 of a DELETE to a subscribed verifier (verifier/)
#     rejecting the kid, over 100 revocations on a fresh data directory: p50 and p99
#     (bar p99 <= 100 ms);
#   - JWKS requests/s with 1,000 keys, for 200 and for 304;
#   - minting revocable single-use tokens against plain ones, same wrk, same appliance, the
#     ratio (bar >= 0.95), and durable redeems/s of fresh single-use tokens with p50/p99 at
#     16 and 64 connections (rounds of their own, last; see tokens_bench below);
#   - the edge: an HLS segment through nginx auth_request and signd-verify --serve, one
#     cached token, against nginx serving it with no check, the ratio (goal >= 0.5) and
#     p50/p99 (tests/bench/edge.py, an appliance, sidecar and nginx of its own).
# Raw, split, split with subscribers, and split with every signature audited runs
# alternate (their order reversed every other round), 3 rounds,
# medians reported: the machine is shared and noisy. The configuration is put back to split
# and audit_every_signature = false after each run that changed it (and on exit).
#   BENCH_SECONDS=10  length of each measurement
#   BENCH_ROUNDS=3    rounds
#   BENCH_ONLY=tokens only the issue-11 token measurements (mint revocable single-use vs
#                     plain, redeem/s); with BENCH_SECONDS=3 BENCH_ROUNDS=1, a quick try
#   BENCH_ONLY=jwt    only the raw loop and split (issues 3 and 5), a few minutes
#   BENCH_ONLY=edge   only the edge rows (issue 24), about a minute
#   SIGND_BUILD=build the build directory (`make bench` passes $(BUILD)): its bin/ is run,
#                     its bench/ holds the data directories and the table
# The data directory build/bench/appliance (1,000 keys, a few minutes to create the first
# time) is kept and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
build=${SIGND_BUILD:-build}
export SIGND_BUILD=$build
only=${BENCH_ONLY:-}
case $only in
"" | tokens | jwt | edge) ;;
*)
	echo "bench: BENCH_ONLY must be empty, tokens, jwt or edge" >&2
	exit 2
	;;
esac
mkdir -p "$build/bench"
if [ "$only" = edge ]; then
	{
		echo "| measure (median of $rounds, ${secs}s each) | value |"
		echo "| --- | --- |"
		/usr/bin/python3 tests/bench/edge.py "$secs" "$rounds"
	} | tee "$build/bench/edge.txt"
	exit "${PIPESTATUS[0]}"
fi
dir="$top/$build/bench/appliance"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$build/bench"
provisioning/init-data-dir.sh "$dir" "$port" >&2
conf="$dir/appliance.conf"
# The per-credential rate limit at its highest: the buckets are still taken on every
# request, as in production, but never refuse (a fast machine redeems over the default
# 5,000/s, and a 429 fails the bench).
sed -i -E "s/^port = [0-9]+\$/port = $port/; s/^worker_threads = [0-9]+\$/worker_threads = 72/; s/^rate_limit_per_second = [0-9]+\$/rate_limit_per_second = 1000000/" "$conf"
grep -q '^rate_limit_per_second = 1000000$' "$conf" || { echo "bench: cannot set rate_limit_per_second in $conf" >&2; exit 1; }
url="https://127.0.0.1:$port"
pid=
start() {
	"$build/bin/signd" "$conf" >"$dir/stdout.log" 2>>"$dir/signd.log" &
	pid=$!
	for _ in $(seq 100); do
		grep -q listening "$dir/stdout.log" 2>/dev/null && return 0
		sleep 0.2
	done
	echo "bench: signd did not start; see $dir/signd.log" >&2
	exit 1
}
stop() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	pid=
}
# process_model = split, the only model, in the configuration (the line replaced, or added
# when the data directory predates the setting or still names single).
set_model() {
	sed -i -E '/^process_model = /d' "$conf"
	echo "process_model = $1" >>"$conf"
}
# audit_every_signature = true|false, the same way.
set_audit_every() {
	sed -i -E '/^audit_every_signature = /d' "$conf"
	echo "audit_every_signature = $1" >>"$conf"
}
trap 'stop; set_model split; set_audit_every false' EXIT
set_model split
set_audit_every false

start
# 1,000 active keys (created once, in parallel).
SIGND_URL=$url SIGND_DIR=$dir /usr/bin/python3 - <<'PY' >&2
import concurrent.futures, os, requests
url, d = os.environ["SIGND_URL"], os.environ["SIGND_DIR"]
s = requests.Session(); s.verify = d + "/tls/cert.pem"
s.trust_env = False  # REQUESTS_CA_BUNDLE would override the session's verify
s.headers["Authorization"] = "Bearer " + open(d + "/admin.credential").read().strip()
have = s.get(url + "/v1/keys?state=active").json()["count"]
need = 1000 - have
if need > 0:
    print("bench: creating %d keys (once)" % need, flush=True)
    with concurrent.futures.ThreadPoolExecutor(8) as p:
        codes = list(p.map(lambda i: s.post(url + "/v1/keys", json={"label": "bench"}).status_code, range(need)))
    assert codes.count(201) == need, codes
# The app server's credential: a signer for every kid (admins do not sign), made once.
signer = d + "/bench-signer.credential"
if not os.path.exists(signer):
    r = s.post(url + "/v1/credentials", json={"role": "signer", "kids": "all", "label": "bench"})
    assert r.status_code == 201, r.text
    fd = os.open(signer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (r.json()["secret"] + "\n").encode())
    os.close(fd)
# The relying party's credential for POST /v1/tokens/redeem (role redeemer), made once.
redeemer = d + "/bench-redeemer.credential"
if not os.path.exists(redeemer):
    r = s.post(url + "/v1/credentials", json={"role": "redeemer", "label": "bench"})
    assert r.status_code == 201, r.text
    fd = os.open(redeemer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (r.json()["secret"] + "\n").encode())
    os.close(fd)
PY
kid=$(SIGND_URL=$url SIGND_DIR=$dir /usr/bin/python3 -c '
import os, requests
d = os.environ["SIGND_DIR"]
s = requests.Session(); s.trust_env = False
r = s.post(os.environ["SIGND_URL"] + "/v1/tokens", json={"sub": "probe"}, verify=d + "/tls/cert.pem",
    headers={"Authorization": "Bearer " + open(d + "/bench-signer.credential").read().strip()})
print(r.json()["kid"])')
stop

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The median of the array named $1.
med() {
	local -n runs=$1
	printf '%s\n' "${runs[@]}" | median
}
# For each name given, sets the variable of that name to the median of NAME_runs.
medians() {
	local v
	for v; do
		printf -v "$v" '%s' "$(med "${v}_runs")"
	done
}
# Issue 11: revocable single-use tokens against plain ones, and redeems/s. One appliance
# per round: POST /v1/tokens with {} (plain) and with {"revocable":true,"single_use":true},
# wrk -t2 -c64, one right after the other (order reversed every other round); both runs
# write the tokens they minted (tests/bench/mint_tokens.lua), the same work for both. The
# single-use ones, topped up by unmeasured minting to redeem_tokens per redeem run, are then
# redeemed, each once (a second redeem is a 409), by wrk -t2 at 16 and at 64 connections
# (tests/bench/redeem.lua, each thread its own slice of them): a run ends when its tokens
# are spent or after BENCH_SECONDS. Only a 200 saying "redeemed":true counts; any other
# answer fails the bench. Durable: the appliance answers 200 only once the consumption is
# fsynced (a group commit shared by concurrent redeems).
redeem_tokens=${BENCH_REDEEM_TOKENS:-$((secs * 2000))}
plain_body='{}' su_body='{"revocable":true,"single_use":true}'
plain_runs=() su_runs=() r16_runs=() r16_p50_runs=() r16_p99_runs=()
r64_runs=() r64_p50_runs=() r64_p99_runs=()
# One wrk mint run (body, token file prefix, seconds) against the running appliance: wrk's
# output, or a message and failure on any answer that is not a token.
tok_mint() {
	local body=$1 prefix=$2 t=$3 out minted lines
	out=$(SIGND_CREDENTIAL_FILE="$dir/bench-signer.credential" SIGND_MINT_BODY="$body" \
		SIGND_TOKENS_OUT="$prefix" wrk -t2 -c64 -d"${t}s" --latency -s tests/bench/mint_tokens.lua \
		"$url") || return 1
	if ! echo "$out" | grep -qE '^bench: minted [0-9]+ bad 0$' || echo "$out" | grep -q "Non-2xx"; then
		echo "bench: POST /v1/tokens $body answered something other than a token:" >&2
		echo "$out" >&2
		return 1
	fi
	minted=$(echo "$out" | awk '/^bench: minted/ {print $3}')
	lines=$(cat "$prefix".* | wc -l)
	if [ "$lines" -ne "$minted" ]; then
		echo "bench: $minted tokens minted but $lines written to $prefix.*" >&2
		return 1
	fi
	echo "$out"
}
# One wrk redeem run at $1 connections, spending the token slices $2.0 and $2.1: appends its
# redeems/s and p50/p99 to that connection count's arrays, or fails on any non-200.
tok_redeem() {
	local c=$1 slices=$2 out line n bad left span rate p50 p99
	echo "bench: round $r/$rounds: POST /v1/tokens/redeem, a fresh single-use token each, wrk -t2 -c$c, $(cat "$slices".* | wc -l) tokens or ${secs}s" >&2
	out=$(SIGND_CREDENTIAL_FILE="$dir/bench-redeemer.credential" SIGND_TOKENS_IN="$slices" \
		wrk -t2 -c"$c" -d"${secs}s" --latency -s tests/bench/redeem.lua "$url") || exit 1
	line=$(echo "$out" | grep '^bench: redeemed ') || true
	read -r _ _ n _ bad _ left _ span _ rate <<<"$line"
	if [ -z "$line" ] || [ "$bad" != 0 ] || [ "$n" = 0 ] || echo "$out" | grep -q "Non-2xx"; then
		echo "bench: FAILED: POST /v1/tokens/redeem answered something other than a 200 redeem:" >&2
		echo "$out" >&2
		exit 1
	fi
	if echo "$out" | grep -q "Socket errors"; then
		echo "bench: warning: redeem run at -c$c: $(echo "$out" | grep "Socket errors")" >&2
	fi
	# A thread that spent its slice stops at once: the redeems it still had in flight (and
	# the token wrk's request check takes) are not counted, nor is their time.
	echo "bench: $n redeems counted in ${span}s ($left tokens not sent): $rate/s" >&2
	p50=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $3}')
	p99=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $5}')
	case $c in
	16) r16_runs+=("$rate"); r16_p50_runs+=("$p50"); r16_p99_runs+=("$p99") ;;
	64) r64_runs+=("$rate"); r64_p50_runs+=("$p50"); r64_p99_runs+=("$p99") ;;
	esac
}
tokens_bench() {
	local tmp="$top/$build/bench/tokens" order m body out rps have need t c
	for r in $(seq "$rounds"); do
		rm -rf "$tmp"
		mkdir -p "$tmp"
		start
		if [ $((r % 2)) -eq 1 ]; then order="plain su"; else order="su plain"; fi
		for m in $order; do
			if [ "$m" = plain ]; then body=$plain_body; else body=$su_body; fi
			echo "bench: round $r/$rounds: POST /v1/tokens $body, wrk -t2 -c64, ${secs}s" >&2
			out=$(tok_mint "$body" "$tmp/$m" "$secs") || exit 1
			rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
			if [ "$m" = plain ]; then plain_runs+=("$rps"); else su_runs+=("$rps"); fi
		done
		cat "$tmp"/su.* >"$tmp/pool"
		rm -f "$tmp"/su.* "$tmp"/plain.*
		need=$((2 * redeem_tokens))
		have=$(wc -l <"$tmp/pool")
		while [ "$have" -lt "$need" ]; do
			t=$(awk -v n=$((need - have)) -v r="${su_runs[-1]}" 'BEGIN {t = int(n / (r > 50 ? r : 50)) + 1; print (t > 60 ? 60 : t)}')
			echo "bench: round $r/$rounds: minting $((need - have)) more single-use tokens for the redeem runs (${t}s, not measured)" >&2
			tok_mint "$su_body" "$tmp/more" "$t" >/dev/null || exit 1
			cat "$tmp"/more.* >>"$tmp/pool"
			rm -f "$tmp"/more.*
			have=$(wc -l <"$tmp/pool")
		done
		# redeem_tokens for each run, dealt alternately to its two wrk threads' slices.
		awk -v n="$redeem_tokens" -v a="$tmp/r16" -v b="$tmp/r64" \
			'NR <= 2 * n { print > ((NR <= n ? a : b) "." (NR % 2)) }' "$tmp/pool"
		rm -f "$tmp/pool"
		if [ $((r % 2)) -eq 1 ]; then order="16 64"; else order="64 16"; fi
		for c in $order; do
			tok_redeem "$c" "$tmp/r$c"
		done
		stop
		rm -rf "$tmp"
	done
	medians plain su r16 r16_p50 r16_p99 r64 r64_p50 r64_p99
	su_ratio=$(awk -v a="$su" -v b="$plain" 'BEGIN {printf "%.3f", a / b}')
	su_verdict=$(awk -v r="$su_ratio" 'BEGIN {print (r >= 0.95) ? "pass" : "FAIL"}')
}
token_rows() {
	echo "| signed JWTs, POST /v1/tokens {} (plain), wrk -t2 -c64, split (req/s) | $plain |"
	echo "| signed JWTs, same wrk, same appliance, {\"revocable\":true,\"single_use\":true} (req/s) | $su |"
	echo "| ratio revocable single-use / plain (bar >= 0.95) | $su_ratio $su_verdict |"
	echo "| redeems/s, POST /v1/tokens/redeem, a fresh single-use token each, durable (each 200 fsynced first), wrk -t2 -c16, up to $redeem_tokens tokens | $r16 |"
	echo "| redeem latency p50 / p99, -c16 (ms) | $r16_p50 / $r16_p99 |"
	echo "| redeems/s, same, wrk -t2 -c64 | $r64 |"
	echo "| redeem latency p50 / p99, -c64 (ms) | $r64_p50 / $r64_p99 |"
}
if [ "$only" = tokens ]; then
	tokens_bench
	{
		echo "| measure (median of $rounds, ${secs}s each) | value |"
		echo "| --- | --- |"
		token_rows
	} | tee "$build/bench/tokens.txt"
	exit 0
fi

raw_runs=() jwt_runs=() p50_runs=() p99_runs=()
raw_cpu_runs=() cpu_wrk_runs=() cpu_front_runs=() cpu_keeper_runs=()
every_runs=() every_p50_runs=() every_p99_runs=() sse_runs=()
# CPU seconds (user + system, every thread) the appliance's process named $1 (keeper,
# front: the supervisor's children) has used so far; 0 when there is none.
proc_cpu() {
	local p
	p=$(pgrep -P "$pid" -x "$1" | head -1)
	if [ -z "$p" ]; then
		echo 0
		return
	fi
	sed 's/.*) //' "/proc/$p/stat" | awk -v t="$(getconf CLK_TCK)" '{printf "%.3f\n", ($12 + $13) / t}'
}
# One wrk JWT measurement against the running appliance: "bench: wrk_times" and the two
# lines of `times` (the second, wrk's own user and system time), then wrk's output; or
# exit on non-2xx.
mint_wrk() {
	local out
	out=$(SIGND_CREDENTIAL_FILE="$dir/bench-signer.credential" wrk -t2 -c64 -d"${secs}s" --latency \
		-s tests/bench/mint.lua "$url") || return 1
	# times prints this shell's own times, then its children's (wrk's); not in a pipe or a
	# substitution, whose fresh process would have no children to count.
	echo "bench: wrk_times"
	times
	if echo "$out" | grep -q "Non-2xx"; then
		echo "bench: non-2xx responses:" >&2
		echo "$out" >&2
		return 1
	fi
	echo "$out"
}
# One wrk JWT run of a mode against a freshly started appliance: appends req/s (and p50/p99
# where kept) to that mode's arrays. Modes: split (the default), sse (split with 200
# event-stream subscribers connected), every (split with audit_every_signature).
run_mode() {
	local mode=$1 label out subs="" subs_out=""
	case $mode in
	split) label="split" ;;
	sse) label="split, 200 subscribers" ;;
	every) label="split, audit_every_signature"; set_audit_every true ;;
	esac
	start
	if [ "$mode" = sse ]; then
		subs_out=$(mktemp)
		/usr/bin/python3 tests/bench/subscribers.py "$port" "$dir/tls/cert.pem" 200 >"$subs_out" &
		subs=$!
		for _ in $(seq 300); do
			grep -q ready "$subs_out" && break
			kill -0 "$subs" 2>/dev/null || { echo "bench: subscribers failed" >&2; exit 1; }
			sleep 0.1
		done
	fi
	echo "bench: round $r/$rounds: POST /v1/tokens over HTTPS, $label, wrk -t2 -c64, ${secs}s" >&2
	local k0 f0 k1 f1
	k0=$(proc_cpu keeper)
	f0=$(proc_cpu front)
	out=$(mint_wrk) || exit 1
	k1=$(proc_cpu keeper)
	f1=$(proc_cpu front)
	if [ -n "$subs" ]; then
		kill "$subs" 2>/dev/null
		wait "$subs" 2>/dev/null || true
		rm -f "$subs_out"
	fi
	stop
	set_audit_every false
	set_model split
	local rps p50 p99 n
	rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
	n=$(echo "$out" | awk '/requests in/ {print $1}')
	p50=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $3}')
	p99=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $5}')
	case $mode in
	split)
		jwt_runs+=("$rps"); p50_runs+=("$p50"); p99_runs+=("$p99")
		# CPU per token, in microseconds, of each party.
		cpu_wrk_runs+=("$(echo "$out" | awk -v n="$n" '/^bench: wrk_times/ {at = NR + 2}
			NR == at {s = 0; for (i = 1; i <= 2; i++) { split($i, b, "m"); sub("s", "", b[2]); s += b[1] * 60 + b[2] }
				printf "%.1f", s * 1e6 / n}')")
		cpu_front_runs+=("$(awk -v a="$f0" -v b="$f1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) * 1e6 / n}')")
		cpu_keeper_runs+=("$(awk -v a="$k0" -v b="$k1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) * 1e6 / n}')")
		;;
	sse) sse_runs+=("$rps") ;;
	every) every_runs+=("$rps"); every_p50_runs+=("$p50"); every_p99_runs+=("$p99") ;;
	esac
}
# Every other round runs the modes in reverse order: on this shared machine the position of
# a run in its round (what ran just before it) moves its figure by several percent.
for r in $(seq "$rounds"); do
	echo "bench: round $r/$rounds: raw C_Sign loop, 2 threads, ${secs}s" >&2
	raw_out=$("$build/bin/bench-hsm" raw "$dir" 2 "$secs" "$kid")
	raw_runs+=("$(echo "$raw_out" | awk '/^raw_sign_per_s:/ {print $2}')")
	raw_cpu_runs+=("$(echo "$raw_out" | awk '/^raw_cpu_us_per_sig:/ {print $2}')")
	if [ $((r % 2)) -eq 1 ]; then order="split sse every"; else order="every sse split"; fi
	if [ "$only" = jwt ]; then
		order="split"
	fi
	for mode in $order; do
		run_mode "$mode"
	done
done
medians raw jwt p50 p99 every every_p50 every_p99 sse raw_cpu cpu_wrk cpu_front cpu_keeper
# Where a token's CPU goes, and the most JWT / raw could be on this machine with this
# client: both CPUs are shared by wrk, the front and the keeper, so with a front that cost
# nothing and a keeper exactly as cheap as the raw loop, a token would still cost the raw
# signature plus wrk's share.
cpu_rows() {
	echo "| CPU per token, split, in microseconds: wrk / front / keeper (raw loop: per signature) | $cpu_wrk / $cpu_front / $cpu_keeper ($raw_cpu) |"
	awk -v r="$raw_cpu" -v w="$cpu_wrk" -v f="$cpu_front" -v k="$cpu_keeper" 'BEGIN {
		printf "| JWT / raw from those CPU figures; ceiling with a front costing nothing and a keeper as cheap as the raw loop | %.3f; %.3f |\n", r / (w + f + k), r / (r + w) }'
}
if [ "$only" = jwt ]; then
	{
		echo "| measure (median of $rounds, ${secs}s each) | value |"
		echo "| --- | --- |"
		echo "| raw C_SignInit+C_Sign loop, 2 threads, same token (sig/s) | $raw |"
		echo "| signed JWTs, wrk -t2 -c64, process_model = split (req/s) | $jwt |"
		echo "| JWT latency p50 / p99, split (ms) | $p50 / $p99 |"
		awk -v a="$jwt" -v b="$raw" 'BEGIN {printf "| ratio JWT / raw (bar >= 0.90) | %.3f %s |\n", a / b, (a / b >= 0.90) ? "pass" : "FAIL"}'
		cpu_rows
		echo "| runs raw / split | ${raw_runs[*]} / ${jwt_runs[*]} |"
	} | tee "$build/bench/jwt.txt"
	exit 0
fi

start
etag=$(curl -s --cacert "$dir/tls/cert.pem" -D - -o /dev/null "$url/.well-known/jwks.json" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r')
jwks_bytes=$(curl -s --cacert "$dir/tls/cert.pem" "$url/.well-known/jwks.json" | wc -c)
j200=$(wrk -t2 -c64 -d"${secs}s" "$url/.well-known/jwks.json" | awk '/^Requests\/sec:/ {print $2}')
j304=$(wrk -t2 -c64 -d"${secs}s" -H "If-None-Match: $etag" "$url/.well-known/jwks.json" | awk '/^Requests\/sec:/ {print $2}')
stop

ratio=$(awk -v a="$jwt" -v b="$raw" 'BEGIN {printf "%.3f", a / b}')
verdict=$(awk -v r="$ratio" 'BEGIN {print (r >= 0.90) ? "pass" : "FAIL"}')
every_ratio=$(awk -v a="$every" -v b="$jwt" 'BEGIN {printf "%.3f", a / b}')
sse_ratio=$(awk -v a="$sse" -v b="$jwt" 'BEGIN {printf "%.3f", a / b}')
sse_verdict=$(awk -v r="$sse_ratio" 'BEGIN {print (r >= 0.90) ? "pass" : "FAIL"}')

# Revocation propagation, on a data directory of its own (the bench token is full: 1,000
# keys), made fresh each run: 100 keys created, each revoked while a verifier listens.
pdir="$top/$build/bench/propagation"
rm -rf "$pdir"
pport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
provisioning/init-data-dir.sh "$pdir" "$pport" >&2
"$build/bin/signd" "$pdir/appliance.conf" >"$pdir/stdout.log" 2>>"$pdir/signd.log" &
ppid=$!
for _ in $(seq 100); do
	grep -q listening "$pdir/stdout.log" 2>/dev/null && break
	sleep 0.2
done
prop=$(SIGND_URL="https://127.0.0.1:$pport" SIGND_DIR="$pdir" /usr/bin/python3 - <<'PY'
import os, subprocess, requests
url, d = os.environ["SIGND_URL"], os.environ["SIGND_DIR"]
s = requests.Session(); s.verify = d + "/tls/cert.pem"; s.trust_env = False
s.headers["Authorization"] = "Bearer " + open(d + "/admin.credential").read().strip()
with open(d + "/publication.pem", "w") as f:
    f.write(s.get(url + "/v1/revocations/key").json()["pem"])
r = s.post(url + "/v1/credentials", json={"role": "signer", "kids": "all", "label": "bench"})
fd = os.open(d + "/signer.credential", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, (r.json()["secret"] + "\n").encode()); os.close(fd)
out = subprocess.run([os.environ["SIGND_BUILD"] + "/bin/bench-propagation", url, d + "/tls/cert.pem", d + "/publication.pem",
                      d + "/admin.credential", d + "/signer.credential", "100"],
                     check=True, stdout=subprocess.PIPE, text=True).stdout
print(out.strip().splitlines()[-1])
PY
)
kill "$ppid" 2>/dev/null; wait "$ppid" 2>/dev/null || true
prop_p50=$(echo "$prop" | sed -nE 's/.*p50 ([0-9.]+) ms.*/\1/p')
prop_p99=$(echo "$prop" | sed -nE 's/.*p99 ([0-9.]+) ms.*/\1/p')
prop_verdict=$(awk -v p="$prop_p99" 'BEGIN {print (p != "" && p <= 100) ? "pass" : "FAIL"}')

# The edge (issue 24): nginx auth_request through signd-verify --serve, its own appliance.
edge_rows=$(/usr/bin/python3 tests/bench/edge.py "$secs" "$rounds")

# Mint revocable single-use vs plain, and redeems/s (above), last: their tokens grow the
# database.
tokens_bench
{
	echo "| measure (median of $rounds, ${secs}s each) | value |"
	echo "| --- | --- |"
	echo "| raw C_SignInit+C_Sign loop, 2 threads, same token (sig/s) | $raw |"
	echo "| signed JWTs over HTTPS keep-alive, wrk -t2 -c64, process_model = split (req/s) | $jwt |"
	echo "| ratio JWT / raw (bar >= 0.90) | $ratio $verdict |"
	echo "| JWT latency p50 / p99 (ms) | $p50 / $p99 |"
	cpu_rows
	echo "| signed JWTs, same wrk, split, audit_every_signature = true (req/s) | $every |"
	echo "| JWT latency p50 / p99 with audit_every_signature (ms) | $every_p50 / $every_p99 |"
	echo "| ratio per-signature audit / counts only, the cost of a sign event per token | $every_ratio |"
	echo "| signed JWTs, same wrk, split, 200 event-stream subscribers connected (req/s) | $sse |"
	echo "| ratio with / without 200 subscribers (bar >= 0.90) | $sse_ratio $sse_verdict |"
	echo "| revocation propagation, DELETE 200 -> subscribed verifier rejects, 100 revocations: p50 / p99 (ms; bar p99 <= 100) | $prop_p50 / $prop_p99 $prop_verdict |"
	echo "| JWKS, 1,000 keys ($jwks_bytes bytes), 200 (req/s) | $j200 |"
	echo "| JWKS, 1,000 keys, 304 on If-None-Match (req/s) | $j304 |"
	echo "| runs raw / split / split with 200 subscribers | ${raw_runs[*]} / ${jwt_runs[*]} / ${sse_runs[*]} |"
	token_rows
	echo "$edge_rows"
} | tee "$build/bench/appliance.txt"
