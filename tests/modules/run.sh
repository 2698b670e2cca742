#!/usr/bin/env bash
# make test-modules: the core black-box set (tests/modules/test_modules.py) on each module of
# TEST_MODULES, one module after another in one pytest run (no xdist: opencryptoki's
# pkcsslotd and its soft token are one per machine). Prints what it measured and the time.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
base=$(mktemp -d /tmp/signd-modules.XXXXXX)
rc=0
# A failed run keeps its data directories (the appliance's and the modules' logs).
trap 'if [ "$rc" = 0 ]; then rm -rf "$base"; else echo "test-modules: logs kept in $base" >&2; fi' EXIT
start=$(date +%s)
TEST_MODULES="${TEST_MODULES:-}" SIGND_MODULES_FIGURES="$top/build/test-modules-figures.json" \
	/usr/bin/python3 -m pytest -q -p no:cacheprovider -p no:xdist --basetemp="$base/pytest" \
	-rs tests/modules "$@" || rc=$?
echo "test-modules: ${TEST_MODULES:-all modules} in $(($(date +%s) - start)) s"
exit "$rc"
