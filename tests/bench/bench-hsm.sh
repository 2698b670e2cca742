#!/usr/bin/env bash
# `make bench-hsm`: the PKCS#11 layer against a raw C_Sign loop on the same SoftHSM2 token,
# next to openssl speed; key generation; opening a token with 1,000 key pairs.
# The table goes to stdout and to build/bench/hsm.txt; progress goes to stderr.
#   BENCH_SECONDS=5   length of each signing measurement (12 of them, plus openssl speed)
# The first run also creates build/bench/token-1000/ (1,000 RSA-2048 keys, a few minutes);
# later runs reuse it. Delete that folder to rebuild it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/bin/bench-hsm
if [ ! -x "$bin" ]; then
	echo "bench-hsm.sh: $bin is missing: run make first" >&2
	exit 1
fi
command -v openssl >/dev/null || { echo "bench-hsm.sh: openssl not found" >&2; exit 1; }
mkdir -p build/bench
exec "$bin" run build/bench/hsm.txt
