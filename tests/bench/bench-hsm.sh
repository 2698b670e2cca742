#!/usr/bin/env bash
# `make bench-hsm HSM=softhsm2|opencryptoki|tpm2`: the PKCS#11 layer against a raw C_Sign
# loop on the same token of module HSM (default softhsm2), next to openssl speed; key
# generation per size; on SoftHSM2, opening a token with 1,000 key pairs.
# The module's token is set up, and its daemons started and stopped, by
# provisioning/hsm/$HSM.sh (start / conf / stop), reused by later runs: in
# build/bench/hsm-softhsm2/ for SoftHSM2 (a token of its own), and for another module in
# build/bench/appliance-$HSM/, the data directory `make bench HSM=...` uses too (one
# opencryptoki soft token per machine: its script refuses a second data directory). The
# bench's keys are destroyed after each measurement. The table goes to stdout and to
# build/bench/hsm-$HSM.txt; progress goes to stderr.
#   BENCH_SECONDS=5   length of each signing measurement (4 per round)
#   BENCH_ROUNDS=3    rounds (1 to 15): more on a busy machine; the bar is read on the
#                     median of each round's hsm / raw
#   BENCH_GEN_KEYS=20 RSA-2048 keys per key-generation measurement (half for 3072, a
#                     quarter for 4096; each size on 1 and on 2 threads; destroyed after)
# On SoftHSM2 the first run also creates build/bench/token-1000/ (1,000 RSA-2048 keys, a few
# minutes); later runs reuse it. Delete that folder to rebuild it.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
build=${SIGND_BUILD:-build}
export SIGND_BUILD=$build
hsm=${HSM:-softhsm2}
script=provisioning/hsm/$hsm.sh
if ! [[ $hsm =~ ^[a-z0-9]+$ ]] || [ ! -x "$script" ]; then
	echo "bench-hsm.sh: no module script $script; HSM is one of: $(cd provisioning/hsm && ls *.sh | sed 's/\.sh$//' | tr '\n' ' ')" >&2
	exit 2
fi
bin=$build/bin/bench-hsm
if [ ! -x "$bin" ]; then
	echo "bench-hsm.sh: $bin is missing: run make first" >&2
	exit 1
fi
command -v openssl >/dev/null || { echo "bench-hsm.sh: openssl not found" >&2; exit 1; }
if [ "$hsm" = softhsm2 ]; then
	data=$top/$build/bench/hsm-softhsm2
else
	data=$top/$build/bench/appliance-$hsm
fi
mkdir -p "$data"
# The module's daemons (none for SoftHSM2) are stopped however this ends.
trap '"$script" stop "$data" >&2' EXIT
"$script" start "$data" >&2
"$script" conf "$data" >"$data/module.conf"
"$bin" run "$build/bench/hsm-$hsm.txt" "$data/module.conf" "$hsm"
