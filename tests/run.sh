#!/usr/bin/env bash
# Runs the suites: `tests/run.sh` runs all, `tests/run.sh unit|blackbox` one of them.
# Unit tests are cmocka binaries (each creates its own SoftHSM2 token in a temporary
# directory); black-box tests are pytest under Debian's python (/usr/bin/python3), which
# sees python3-requests and python3-jwcrypto.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
failed=0
passed=0

if [ "$what" = all ] || [ "$what" = unit ]; then
	for t in "${SIGND_BUILD:-build}"/tests/test_*; do
		[ -x "$t" ] || continue
		echo "== $t"
		if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
	done
fi

if [ "$what" = all ] || [ "$what" = blackbox ]; then
	echo "== tests/blackbox"
	/usr/bin/python3 -m pytest -q -p no:cacheprovider tests/blackbox
	rc=$?
	# pytest exits 5 when it collected nothing: that is a failure of the suite, not a pass.
	if [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi

echo "suites: $passed passed, $failed failed"
[ $failed -eq 0 ]
