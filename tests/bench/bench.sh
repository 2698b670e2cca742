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
#     p50/p99 (tests/bench/edge.py, an appliance, sidecar and nginx of its own);
#   - cluster mode (issue 20): minting on a node on PostgreSQL against a node on SQLite, the
#     ratio (bar >= 0.95); durable redeems/s through HAProxy to 3 nodes on PostgreSQL
#     against one node on SQLite, p50/p99; revocation propagation from node1 to a verifier
#     subscribed to node3 (bar p99 <= 100 ms) (cluster_bench below).
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
#   BENCH_ONLY=cluster  only the cluster rows (issue 20): PostgreSQL, 3 nodes, HAProxy and a
#                     SQLite node of their own, fresh; with BENCH_SECONDS=5 BENCH_ROUNDS=3,
#                     about 5 minutes
#   HSM=softhsm2      the PKCS#11 module (provisioning/hsm/HSM.sh: start, conf, stop). With
#                     another module (opencryptoki, tpm2), only the BENCH_ONLY=jwt rows (the
#                     raw loop and signed JWTs over HTTPS on that module's token), on the
#                     data directory build/bench/appliance-HSM with BENCH_KEYS keys (default
#                     20, at most the module's max_active_keys; SoftHSM2: 1,000): the other
#                     rows do not depend on the module
#   SIGND_BUILD=build the build directory (`make bench` passes $(BUILD)): its bin/ is run,
#                     its bench/ holds the data directories and the table
# The data directory build/bench/appliance (1,000 keys, a few minutes to create the first
# time) is kept and reused by later runs; another module's (HSM=...) too, but opencryptoki's,
# made fresh each run (its token is the machine's).
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
. provisioning/lib.sh
secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
build=${SIGND_BUILD:-build}
export SIGND_BUILD=$build
only=${BENCH_ONLY:-}
case $only in
"" | tokens | jwt | edge | cluster) ;;
*)
	echo "bench: BENCH_ONLY must be empty, tokens, jwt, edge or cluster" >&2
	exit 2
	;;
esac
hsm=${HSM:-softhsm2}
module_sh=$top/provisioning/hsm/$hsm.sh
if ! [[ $hsm =~ ^[a-z0-9]+$ ]] || [ ! -x "$module_sh" ]; then
	echo "bench: HSM=$hsm: no such module; pick one of: $(cd provisioning/hsm && ls ./*.sh | sed 's|./||; s|\.sh$||' | tr '\n' ' ')" >&2
	exit 2
fi
if [ "$hsm" != softhsm2 ]; then
	case $only in
	"" | jwt) only=jwt ;;
	*)
		echo "bench: HSM=$hsm measures the raw loop and the JWT rows only (BENCH_ONLY empty or jwt)" >&2
		exit 2
		;;
	esac
fi
mkdir -p "$build/bench"
if [ "$only" = edge ]; then
	{
		echo "| measure (median of $rounds, ${secs}s each) | value |"
		echo "| --- | --- |"
		/usr/bin/python3 tests/bench/edge.py "$secs" "$rounds"
	} | tee "$build/bench/edge.txt"
	exit "${PIPESTATUS[0]}"
fi
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
# output, or a message and failure on any answer that is not a token. With a fourth
# argument, busy, answers 503 are tolerated (counted in wrk's output, "bench: bad_503 N"):
# for the unmeasured minting of the cluster's redeem tokens (cluster_bench).
tok_mint() {
	local body=$1 prefix=$2 t=$3 busy=${4:-} out minted lines bad b503
	out=$(SIGND_CREDENTIAL_FILE="$dir/bench-signer.credential" SIGND_MINT_BODY="$body" \
		SIGND_TOKENS_OUT="$prefix" wrk -t2 -c64 -d"${t}s" --latency -s tests/bench/mint_tokens.lua \
		"$url") || return 1
	bad=$(echo "$out" | awk '/^bench: minted/ {print $5}')
	b503=$(echo "$out" | awk '/^bench: bad_503/ {print $3}')
	if [ -n "$busy" ] && [ -n "$bad" ] && [ "$bad" != 0 ] && [ "$bad" = "$b503" ]; then
		echo "bench: warning: $bad answers 503 while minting on $url: $(echo "$out" | grep '^bench: first bad')" >&2
	elif ! echo "$out" | grep -qE '^bench: minted [0-9]+ bad 0$' || echo "$out" | grep -q "Non-2xx"; then
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
# One wrk redeem run (URL, redeemer credential file, connections, token slices prefix): the
# slices PREFIX.0 and PREFIX.1 spent by wrk -t2 -cC; prints "rate p50 p99" (redeems/s and
# ms), or a message and failure on any answer that is not a 200 redeem.
redeem_wrk() {
	local u=$1 cred=$2 c=$3 slices=$4 out line n bad left span rate p50 p99
	out=$(SIGND_CREDENTIAL_FILE="$cred" SIGND_TOKENS_IN="$slices" \
		wrk -t2 -c"$c" -d"${secs}s" --latency -s tests/bench/redeem.lua "$u") || return 1
	line=$(echo "$out" | grep '^bench: redeemed ') || true
	read -r _ _ n _ bad _ left _ span _ rate <<<"$line"
	if [ -z "$line" ] || [ "$bad" != 0 ] || [ "$n" = 0 ] || echo "$out" | grep -q "Non-2xx"; then
		echo "bench: FAILED: POST /v1/tokens/redeem on $u answered something other than a 200 redeem:" >&2
		echo "$out" >&2
		return 1
	fi
	if echo "$out" | grep -q "Socket errors"; then
		echo "bench: warning: redeem run at -c$c on $u: $(echo "$out" | grep "Socket errors")" >&2
	fi
	# A thread that spent its slice stops at once: the redeems it still had in flight (and
	# the token wrk's request check takes) are not counted, nor is their time.
	echo "bench: $n redeems counted in ${span}s ($left tokens not sent): $rate/s" >&2
	p50=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $3}')
	p99=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $5}')
	echo "$rate $p50 $p99"
}
# One wrk redeem run at $1 connections against the bench appliance, spending the token
# slices $2.0 and $2.1: appends its redeems/s and p50/p99 to that connection count's
# arrays, or fails on any non-200.
tok_redeem() {
	local c=$1 slices=$2 res rate p50 p99
	echo "bench: round $r/$rounds: POST /v1/tokens/redeem, a fresh single-use token each, wrk -t2 -c$c, $(cat "$slices".* | wc -l) tokens or ${secs}s" >&2
	res=$(redeem_wrk "$url" "$dir/bench-redeemer.credential" "$c" "$slices") || exit 1
	read -r rate p50 p99 <<<"$res"
	case $c in
	16) r16_runs+=("$rate"); r16_p50_runs+=("$p50"); r16_p99_runs+=("$p99") ;;
	64) r64_runs+=("$rate"); r64_p50_runs+=("$p50"); r64_p99_runs+=("$p99") ;;
	esac
}
# Cluster mode (issue 20), on data directories of its own made fresh each run: PostgreSQL,
# one shared SoftHSM2 token and three nodes, provisioned and started by the steps of
# provisioning/cluster.sh (pg-init, pg-server, pg-db, node, haproxy-cfg: the nodes are
# configured as `make cluster` configures them), HAProxy in TCP mode in front of them; and
# beside them one node on SQLite (init-data-dir.sh). The SQLite node has a token of its own:
# on the cluster's token, its start would destroy the cluster's keys as orphans (they have
# no row in its registry), and the cluster's nodes its keys, so the two cannot share keys.
# Each token holds one 2,048-bit key that the mint runs sign with. Measured, in one run:
#  - signed JWTs/s over HTTPS (mint.lua, wrk -t2 -c64, as the JWT row) on node1 (PostgreSQL)
#    and on the SQLite node, each started fresh for its run, one right after the other,
#    their order reversed every other round; the ratio PostgreSQL / SQLite (bar >= 0.95:
#    nothing per token touches the database at mint);
#  - durable redeems/s of fresh single-use tokens with p50/p99, wrk -t2 -c64 (redeem.lua):
#    through HAProxy to the three PostgreSQL nodes, and on the SQLite node, alternated the
#    same way; each side's tokens minted on it just before, not measured;
#  - revocation propagation across nodes, once per run: bench-propagation creates 100 keys
#    on node1, then revokes them one at a time on node1 while its verifier fetches from and
#    is subscribed to node3's event stream: p50/p99 from the DELETE's 200 to the verifier
#    rejecting the kid (bar p99 <= 100 ms).
# Everything (wrk, the nodes, PostgreSQL, HAProxy) shares this machine's cores.
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cl_dir="$top/$build/bench/cluster"
cl_sdir="$cl_dir/sqlite"
declare -A cl_pid=()
cl_busy=0 cl_minted=0
cl_mint_pg_runs=() cl_mint_pg_p50_runs=() cl_mint_pg_p99_runs=()
cl_mint_sq_runs=() cl_mint_sq_p50_runs=() cl_mint_sq_p99_runs=()
cl_red_pg_runs=() cl_red_pg_p50_runs=() cl_red_pg_p99_runs=()
cl_red_sq_runs=() cl_red_sq_p50_runs=() cl_red_sq_p99_runs=()

# The bench's settings in a node's configuration: as the bench appliance's (above), and
# the publication signing budget at its highest (10,000) too: bench-propagation revokes faster than
# the default 20 feed signatures a second, and a node whose budget is spent answers the
# verifier's feed fetch 503 (or an older copy), which retries 500 ms later: that retry, not
# the propagation, would be the p99 (measured: p99 510 ms with the default, 10 ms without).
cl_conf() {
	prov_conf_set "$1" worker_threads 72
	prov_conf_set "$1" rate_limit_per_second 1000000
	prov_conf_set "$1" publication_signs_per_second 10000
}

# Starts signd (NAME, its configuration, port, CA certificate) in a session of its own and
# waits until its /readyz answers 200; exits on failure.
cl_start() {
	local name=$1 conf=$2 p=$3 ca=$4 log
	log="$(dirname "$conf")/signd.log"
	setsid "$build/bin/signd" "$conf" >/dev/null 2>>"$log" &
	cl_pid[$name]=$!
	prov_wait_ready bench "$p" "$ca" "${cl_pid[$name]}" "$name" "$log" || exit 1
}

# Stops NAME (SIGTERM; PostgreSQL SIGINT, its fast shutdown) and waits, at most 30 s before
# SIGKILL.
cl_stop() {
	local name=$1 p=${cl_pid[$1]:-} t sig=TERM
	[ -n "$p" ] || return 0
	[ "$name" != pg ] || sig=INT
	kill -"$sig" "$p" 2>/dev/null || true
	for ((t = 0; t < 300; t++)); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	unset "cl_pid[$name]"
}

# The load balancer first, the database last (the nodes write to it as they stop).
cl_stop_all() {
	local name
	for name in haproxy sqlite node1 node2 node3 pg; do
		cl_stop "$name"
	done
}

# One key and the bench's signer and redeemer credentials (files in DIR) on the appliance
# at URL, with DIR/tls/cert.pem and DIR/admin.credential.
cl_provision() {
	SIGND_URL=$1 SIGND_DIR=$2 /usr/bin/python3 - <<'PY' >&2
import os, requests
url, d = os.environ["SIGND_URL"], os.environ["SIGND_DIR"]
s = requests.Session(); s.verify = d + "/tls/cert.pem"; s.trust_env = False
s.headers["Authorization"] = "Bearer " + open(d + "/admin.credential").read().strip()
if s.get(url + "/v1/keys?state=active").json()["count"] == 0:
    r = s.post(url + "/v1/keys", json={"bits": 2048, "label": "bench"})
    assert r.status_code == 201, r.text
for role, extra in (("signer", {"kids": "all"}), ("redeemer", {})):
    r = s.post(url + "/v1/credentials", json=dict(role=role, label="bench", **extra))
    assert r.status_code == 201, r.text
    fd = os.open("%s/bench-%s.credential" % (d, role), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (r.json()["secret"] + "\n").encode())
    os.close(fd)
PY
}

# PostgreSQL, the three nodes (started, ready) and the SQLite node's data directory (not
# started), all fresh.
cl_setup() {
	local n pgdir="$cl_dir/pg"
	rm -rf "$cl_dir"
	mkdir -p "$cl_dir"
	cl_lb=$(free_port)
	cl_ports=("$cl_lb")
	for n in 1 2 3; do cl_ports+=("$(free_port)"); done
	cl_sport=$(free_port)
	echo "bench: cluster: PostgreSQL in $pgdir, nodes on ${cl_ports[*]:1}, HAProxy on $cl_lb, the SQLite node on $cl_sport" >&2
	# The accounts that log in to the database: root (the supervisor, signd-provision) and
	# each node's keeper and front, as tests/blackbox/cluster.py maps them.
	provisioning/cluster.sh pg-init "$pgdir" root signd-keeper signd-front >&2
	provisioning/cluster.sh pg-server "$pgdir" >>"$pgdir/postgres.log" 2>&1 &
	cl_pid[pg]=$!
	provisioning/cluster.sh pg-db "$pgdir" "${cl_pid[pg]}" >&2
	for n in 1 2 3; do
		provisioning/cluster.sh node "$cl_dir" "$n" "${cl_ports[n]}" "$pgdir" \
			"https://127.0.0.1:$cl_lb" >&2
		cl_conf "$cl_dir/node$n/appliance.conf"
	done
	# node1 first, which makes the mint key; nodes 2 and 3 then find it in the token as they
	# start (before the keeper looked up a kid missing from its handle cache in the token, a
	# keeper started before another node made a key answered key_revoked for it).
	cl_start node1 "$cl_dir/node1/appliance.conf" "${cl_ports[1]}" "$cl_dir/tls/cert.pem"
	cl_provision "https://127.0.0.1:${cl_ports[1]}" "$cl_dir"
	for n in 2 3; do
		cl_start "node$n" "$cl_dir/node$n/appliance.conf" "${cl_ports[n]}" "$cl_dir/tls/cert.pem"
	done
	provisioning/init-data-dir.sh "$cl_sdir" "$cl_sport" >&2
	cl_conf "$cl_sdir/appliance.conf"
	cl_start sqlite "$cl_sdir/appliance.conf" "$cl_sport" "$cl_sdir/tls/cert.pem"
	cl_provision "https://127.0.0.1:$cl_sport" "$cl_sdir"
	cl_stop sqlite
}

# One mint run (pg: node1, sqlite: the SQLite node), the node started fresh for it.
cl_mint() {
	local side=$1 name conf p d out rps p50 p99
	if [ "$side" = pg ]; then
		name=node1 conf="$cl_dir/node1/appliance.conf" p=${cl_ports[1]} d=$cl_dir
	else
		name=sqlite conf="$cl_sdir/appliance.conf" p=$cl_sport d=$cl_sdir
	fi
	cl_stop "$name"
	cl_start "$name" "$conf" "$p" "$d/tls/cert.pem"
	echo "bench: round $r/$rounds: cluster: POST /v1/tokens on $name ($side), wrk -t2 -c64, ${secs}s" >&2
	out=$(SIGND_CREDENTIAL_FILE="$d/bench-signer.credential" wrk -t2 -c64 -d"${secs}s" --latency \
		-s tests/bench/mint.lua "https://127.0.0.1:$p") || exit 1
	if echo "$out" | grep -q "Non-2xx"; then
		echo "bench: non-2xx responses from $name:" >&2
		echo "$out" >&2
		exit 1
	fi
	rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
	p50=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $3}')
	p99=$(echo "$out" | awk '/^bench: latency_p50_ms/ {print $5}')
	if [ "$side" = pg ]; then
		cl_mint_pg_runs+=("$rps"); cl_mint_pg_p50_runs+=("$p50"); cl_mint_pg_p99_runs+=("$p99")
	else
		cl_mint_sq_runs+=("$rps"); cl_mint_sq_p50_runs+=("$p50"); cl_mint_sq_p99_runs+=("$p99")
	fi
}

# One redeem run (pg: through HAProxy to the three nodes, sqlite: the SQLite node, running):
# redeem_tokens single-use tokens minted there first (not measured), then spent by wrk.
cl_redeem() {
	local side=$1 u d tmp="$cl_dir/tokens" have t res rate p50 p99 out
	if [ "$side" = pg ]; then
		u="https://127.0.0.1:$cl_lb" d=$cl_dir
	else
		u="https://127.0.0.1:$cl_sport" d=$cl_sdir
	fi
	rm -rf "$tmp"
	mkdir -p "$tmp"
	have=0
	while [ "$have" -lt "$redeem_tokens" ]; do
		t=$(awk -v n=$((redeem_tokens - have)) 'BEGIN {t = int(n / 1000) + 1; print (t > 60 ? 60 : t)}')
		echo "bench: round $r/$rounds: cluster: minting $((redeem_tokens - have)) single-use tokens on $u ($side, ${t}s, not measured)" >&2
		out=$(dir=$d url=$u tok_mint "$su_body" "$tmp/more" "$t" busy) || exit 1
		cl_busy=$((cl_busy + $(echo "$out" | awk '/^bench: bad_503/ {print $3}')))
		cl_minted=$((cl_minted + $(echo "$out" | awk '/^bench: minted/ {print $3}')))
		cat "$tmp"/more.* >>"$tmp/pool"
		rm -f "$tmp"/more.*
		have=$(wc -l <"$tmp/pool")
	done
	awk -v n="$redeem_tokens" -v a="$tmp/r" 'NR <= n { print > (a "." (NR % 2)) }' "$tmp/pool"
	echo "bench: round $r/$rounds: cluster: POST /v1/tokens/redeem on $u ($side), wrk -t2 -c64, $redeem_tokens tokens or ${secs}s" >&2
	res=$(redeem_wrk "$u" "$d/bench-redeemer.credential" 64 "$tmp/r") || exit 1
	read -r rate p50 p99 <<<"$res"
	if [ "$side" = pg ]; then
		cl_red_pg_runs+=("$rate"); cl_red_pg_p50_runs+=("$p50"); cl_red_pg_p99_runs+=("$p99")
	else
		cl_red_sq_runs+=("$rate"); cl_red_sq_p50_runs+=("$p50"); cl_red_sq_p99_runs+=("$p99")
	fi
	rm -rf "$tmp"
}

cluster_bench() {
	local side order n1 n3 out
	cl_load0=$(cut -d' ' -f1-3 /proc/loadavg)
	cl_setup
	for r in $(seq "$rounds"); do
		if [ $((r % 2)) -eq 1 ]; then order="pg sqlite"; else order="sqlite pg"; fi
		for side in $order; do cl_mint "$side"; done
	done
	# The redeems: HAProxy in front of the three nodes (all ready: node1 was restarted and
	# waited for); the SQLite node runs since its last mint run.
	provisioning/cluster.sh haproxy-cfg "$cl_dir" "$cl_lb" "${cl_ports[@]:1}" >"$cl_dir/haproxy.cfg"
	haproxy -c -q -f "$cl_dir/haproxy.cfg"
	setsid haproxy -db -f "$cl_dir/haproxy.cfg" >>"$cl_dir/haproxy.log" 2>&1 &
	cl_pid[haproxy]=$!
	cl_start_wait_lb
	for r in $(seq "$rounds"); do
		if [ $((r % 2)) -eq 1 ]; then order="pg sqlite"; else order="sqlite pg"; fi
		for side in $order; do cl_redeem "$side"; done
	done
	cl_stop sqlite
	cl_stop haproxy
	# Propagation: revoked on node1, seen by a verifier on node3.
	n1="https://127.0.0.1:${cl_ports[1]}" n3="https://127.0.0.1:${cl_ports[3]}"
	echo "bench: cluster: revocation propagation, 100 keys revoked on node1, the verifier on node3" >&2
	SIGND_URL=$n3 SIGND_DIR=$cl_dir /usr/bin/python3 - <<'PY'
import os, requests
url, d = os.environ["SIGND_URL"], os.environ["SIGND_DIR"]
s = requests.Session(); s.verify = d + "/tls/cert.pem"; s.trust_env = False
s.headers["Authorization"] = "Bearer " + open(d + "/admin.credential").read().strip()
with open(d + "/publication.pem", "w") as f:
    f.write(s.get(url + "/v1/revocations/key").json()["pem"])
PY
	out=$("$build/bin/bench-propagation" "$n1" "$cl_dir/tls/cert.pem" "$cl_dir/publication.pem" \
		"$cl_dir/admin.credential" "$cl_dir/bench-signer.credential" 100 "$n3" \
		2>"$cl_dir/propagation.log") || { cat "$cl_dir/propagation.log" >&2; exit 1; }
	cat "$cl_dir/propagation.log" >&2
	cl_fresh=$(sed -nE 's/^bench-propagation: ([0-9]+) mints of a key just made.*/\1/p' "$cl_dir/propagation.log")
	cl_from_req=$(sed -nE 's/.*from the DELETE request.s start: (.*)$/\1/p' "$cl_dir/propagation.log")
	cl_prop_p50=$(echo "$out" | sed -nE 's/.*p50 ([0-9.]+) ms.*/\1/p')
	cl_prop_p99=$(echo "$out" | sed -nE 's/.*p99 ([0-9.]+) ms.*/\1/p')
	cl_prop_max=$(echo "$out" | sed -nE 's/.*max ([0-9.]+) ms.*/\1/p')
	cl_prop_verdict=$(awk -v p="$cl_prop_p99" 'BEGIN {print (p != "" && p <= 100) ? "pass" : "FAIL"}')
	cl_stop_all
	cl_load1=$(cut -d' ' -f1-3 /proc/loadavg)
	medians cl_mint_pg cl_mint_pg_p50 cl_mint_pg_p99 cl_mint_sq cl_mint_sq_p50 cl_mint_sq_p99 \
		cl_red_pg cl_red_pg_p50 cl_red_pg_p99 cl_red_sq cl_red_sq_p50 cl_red_sq_p99
	cl_mint_ratio=$(awk -v a="$cl_mint_pg" -v b="$cl_mint_sq" 'BEGIN {printf "%.3f", a / b}')
	cl_mint_verdict=$(awk -v r="$cl_mint_ratio" 'BEGIN {print (r >= 0.95) ? "pass" : "FAIL"}')
	cl_red_ratio=$(awk -v a="$cl_red_pg" -v b="$cl_red_sq" 'BEGIN {printf "%.3f", a / b}')
	# Each round's own ratio (its two runs one right after the other), and their median: on
	# a machine whose load drifts between rounds, the pairs are closer than the medians.
	local i
	cl_mint_ratio_round_runs=() cl_red_ratio_round_runs=()
	for ((i = 0; i < rounds; i++)); do
		cl_mint_ratio_round_runs+=("$(awk -v a="${cl_mint_pg_runs[i]}" -v b="${cl_mint_sq_runs[i]}" 'BEGIN {printf "%.3f", a / b}')")
		cl_red_ratio_round_runs+=("$(awk -v a="${cl_red_pg_runs[i]}" -v b="${cl_red_sq_runs[i]}" 'BEGIN {printf "%.3f", a / b}')")
	done
	medians cl_mint_ratio_round cl_red_ratio_round
}

# Until HAProxy's /readyz answers 200 (its health checks found the nodes).
cl_start_wait_lb() {
	local i
	for ((i = 0; i < 300; i++)); do
		if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$cl_dir/tls/cert.pem" \
			"https://127.0.0.1:$cl_lb/readyz" 2>/dev/null)" = 200 ]; then
			return 0
		fi
		kill -0 "${cl_pid[haproxy]}" 2>/dev/null || { echo "bench: haproxy exited (see $cl_dir/haproxy.log)" >&2; exit 1; }
		sleep 0.1
	done
	echo "bench: haproxy is not ready after 30 s (see $cl_dir/haproxy.log)" >&2
	exit 1
}

cluster_rows() {
	echo "| cluster: signed JWTs, wrk -t2 -c64, node1 on PostgreSQL (3 nodes up) (req/s) | $cl_mint_pg |"
	echo "| cluster: same wrk, the same node on SQLite (a token of its own, one key each) (req/s) | $cl_mint_sq |"
	echo "| cluster: JWT latency p50 / p99, PostgreSQL / SQLite (ms) | $cl_mint_pg_p50 / $cl_mint_pg_p99; $cl_mint_sq_p50 / $cl_mint_sq_p99 |"
	echo "| cluster: ratio mint PostgreSQL / SQLite (bar >= 0.95) | $cl_mint_ratio $cl_mint_verdict |"
	echo "| cluster: durable redeems/s, a fresh single-use token each, wrk -t2 -c64 through HAProxy to 3 nodes on PostgreSQL, up to $redeem_tokens tokens | $cl_red_pg |"
	echo "| cluster: redeem latency p50 / p99, 3 nodes on PostgreSQL (ms) | $cl_red_pg_p50 / $cl_red_pg_p99 |"
	echo "| cluster: durable redeems/s, same wrk, one node on SQLite | $cl_red_sq |"
	echo "| cluster: redeem latency p50 / p99, one node on SQLite (ms) | $cl_red_sq_p50 / $cl_red_sq_p99 |"
	echo "| cluster: ratio redeems/s 3 nodes PostgreSQL / 1 node SQLite | $cl_red_ratio |"
	echo "| cluster: revocation propagation, DELETE 200 on node1 -> verifier subscribed to node3 rejects, 100 revocations: p50 / p99 (max) (ms; bar p99 <= 100) | $cl_prop_p50 / $cl_prop_p99 ($cl_prop_max) $cl_prop_verdict |"
	echo "| cluster: per-round ratios PostgreSQL / SQLite, mint; redeems (their median) | ${cl_mint_ratio_round_runs[*]} ($cl_mint_ratio_round); ${cl_red_ratio_round_runs[*]} ($cl_red_ratio_round) |"
	echo "| cluster: runs mint PostgreSQL / SQLite; redeems PostgreSQL / SQLite | ${cl_mint_pg_runs[*]} / ${cl_mint_sq_runs[*]}; ${cl_red_pg_runs[*]} / ${cl_red_sq_runs[*]} |"
	echo "| cluster: propagation from the DELETE request's start (not its 200) | $cl_from_req |"
	echo "| cluster: mints on node1 of a key just made there that answered 409 key_revoked and were asked again (the keeper learns the row from the database's note) | ${cl_fresh:-0} |"
	echo "| cluster: answers 503 while minting the redeem runs' single-use tokens (not measured; tolerated), of tokens minted | $cl_busy of $cl_minted |"
	echo "| cluster: load average (1/5/15 min) before / after; cores (shared by wrk, nodes, PostgreSQL, HAProxy) | $cl_load0 / $cl_load1; $(nproc) |"
}
if [ "$only" = cluster ]; then
	trap cl_stop_all EXIT
	cluster_bench
	{
		echo "| measure (median of $rounds, ${secs}s each) | value |"
		echo "| --- | --- |"
		cluster_rows
	} | tee "$build/bench/cluster.txt"
	exit 0
fi
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$build/bench"
# The module's data directory: as make run HSM=... prepares one (provisioning/run.sh): the
# module script's start (daemons, token, PINs), then init-data-dir.sh, then the script's conf
# lines into appliance.conf. make bench-hsm HSM=... (not SoftHSM2) uses the same directory:
# opencryptoki has one soft token per machine, owned by the data directory that made it.
if [ "$hsm" = softhsm2 ]; then
	dir="$top/$build/bench/appliance"
	bench_keys=${BENCH_KEYS:-1000}
	jwt_out=$build/bench/jwt.txt
else
	dir="$top/$build/bench/appliance-$hsm"
	bench_keys=${BENCH_KEYS:-20}
	jwt_out=$build/bench/jwt-$hsm.txt
	# opencryptoki has one soft token per machine, which make test-modules uses too: the
	# bench makes its own (a fresh data directory) and wipes it when done (the script's
	# release), so that the next user finds the token free.
	if [ "$hsm" = opencryptoki ]; then
		release=1
		rm -rf "$dir"
	fi
	mkdir -p "$dir"
	"$module_sh" start "$dir" >&2
fi
module_stop() {
	[ "$hsm" != softhsm2 ] || return 0
	[ -z "${release:-}" ] || [ ! -e "$dir/hsm/token-label" ] || "$module_sh" release "$dir" >&2 || true
	"$module_sh" stop "$dir" >&2 || true
}
trap module_stop EXIT
SIGND_HSM=$hsm provisioning/init-data-dir.sh "$dir" "$port" >&2
conf="$dir/appliance.conf"
if [ "$hsm" != softhsm2 ]; then
	prov_module_conf "$module_sh" "$dir" "$conf"
	# The module's key bound (opencryptoki's object limit, the TPM's store) caps the keys.
	max_keys=$(prov_conf_value "$conf" max_active_keys)
	if [ -n "$max_keys" ] && [ "$bench_keys" -gt "$max_keys" ]; then
		echo "bench: $hsm allows $max_keys active keys: BENCH_KEYS $bench_keys lowered to it" >&2
		bench_keys=$max_keys
	fi
fi
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
trap 'stop; cl_stop_all; set_model split; set_audit_every false; module_stop' EXIT
set_model split
set_audit_every false

start
# BENCH_KEYS active keys, 1,000 on SoftHSM2 (created once, in parallel).
SIGND_URL=$url SIGND_DIR=$dir SIGND_BENCH_KEYS=$bench_keys /usr/bin/python3 - <<'PY' >&2
import concurrent.futures, os, requests
url, d = os.environ["SIGND_URL"], os.environ["SIGND_DIR"]
s = requests.Session(); s.verify = d + "/tls/cert.pem"
s.trust_env = False  # REQUESTS_CA_BUNDLE would override the session's verify
s.headers["Authorization"] = "Bearer " + open(d + "/admin.credential").read().strip()
have = s.get(url + "/v1/keys?state=active").json()["count"]
need = int(os.environ["SIGND_BENCH_KEYS"]) - have
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

raw_runs=() jwt_runs=() p50_runs=() p99_runs=() raw_mech=
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
	raw_mech=$(echo "$raw_out" | awk '/^raw_mechanism:/ {print $2}')
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
		echo "| module (HSM), keys on the token, raw loop's mechanism; load average (1/5/15 min) at the end, cores | $hsm, $bench_keys, $raw_mech; $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) |"
		echo "| raw C_SignInit+C_Sign loop, 2 threads, same token (sig/s) | $raw |"
		echo "| signed JWTs, wrk -t2 -c64, process_model = split (req/s) | $jwt |"
		echo "| JWT latency p50 / p99, split (ms) | $p50 / $p99 |"
		awk -v a="$jwt" -v b="$raw" 'BEGIN {printf "| ratio JWT / raw (bar >= 0.90) | %.3f %s |\n", a / b, (a / b >= 0.90) ? "pass" : "FAIL"}'
		cpu_rows
		echo "| runs raw / split | ${raw_runs[*]} / ${jwt_runs[*]} |"
	} | tee "$jwt_out"
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
# The publication signing budget at its highest, as the cluster nodes' (cl_conf): with the
# default 20 a second, revocations one right after the other spend it, the verifier's feed
# fetch gets a 503 and retries 500 ms later (p99 510 ms, against 7 ms with it raised).
prov_conf_set "$pdir/appliance.conf" publication_signs_per_second 10000
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

# Cluster mode (above): data directories, PostgreSQL and nodes of its own.
cluster_bench

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
	cluster_rows
} | tee "$build/bench/appliance.txt"
