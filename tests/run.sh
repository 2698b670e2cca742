#!/usr/bin/env bash
# Runs the suites: `tests/run.sh` runs all, `tests/run.sh unit|blackbox` one of them.
# Unit tests are cmocka binaries (each creates its own SoftHSM2 token in a temporary
# directory); black-box tests are pytest under Debian's python (/usr/bin/python3), which
# sees python3-requests and python3-jwcrypto.
#
# The black-box files run in parallel (python3-pytest-xdist, one file per worker, so a
# module's appliance stays in one process): SIGND_TEST_JOBS workers, by default 4 (3 under
# AddressSanitizer, whose processes are several times bigger and slower). The tests mostly
# wait on processes and timeouts, so more workers than cores pays, up to the point where key
# generation and TLS make them CPU-bound: on 2 cores 3 to 4 workers did as well as 6 or 8.
# SIGND_TEST_JOBS=0 runs them one after the other.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
failed=0
passed=0

# The suites of the stores and what sits on them run a second time on PostgreSQL
# (SIGND_TEST_BACKEND=postgres: tests/unit/testdb.c starts a server per test process).
# test_sdb is not among them: it runs every test on both backends by itself.
STORE_SUITES="test_registry test_credentials test_tokstate test_chain test_core_keys
	test_core_mint test_core_publish test_reconcile test_keeperd"

# Unit suites run SIGND_UNIT_JOBS at a time (default 3): they mostly wait on their keeper
# children, SoftHSM2's files and their PostgreSQL servers (3 min of wall time for 1.3 min
# of CPU one after the other), and each has its own temporary token, database and sockets.
# A suite's output is printed whole when it ends, so suites never interleave.
unit_jobs=${SIGND_UNIT_JOBS:-3}
logs=$(mktemp -d "${TMPDIR:-/tmp}/signd-unit-XXXXXX")
unit_results=()

# run_unit NAME [ENV=VALUE] BINARY: one suite, its output in $logs/NAME.log and its exit
# status in $logs/NAME.rc.
run_unit() {
	local name=$1
	shift
	local start=$SECONDS
	env "$@" >"$logs/$name.out" 2>&1
	echo $? >"$logs/$name.rc"
	echo "($name: $((SECONDS - start)) s)" >>"$logs/$name.out"
}

unit_wait_slot() {
	while [ "$(jobs -rp | wc -l)" -ge "$unit_jobs" ]; do wait -n; done
}

if [ "$what" = all ] || [ "$what" = unit ]; then
	# The PostgreSQL passes first: they are the longest (test_registry's is over a minute).
	for name in $STORE_SUITES; do
		t="${SIGND_BUILD:-build}/tests/$name"
		[ -x "$t" ] || continue
		unit_results+=("$name.postgres")
		unit_wait_slot
		run_unit "$name.postgres" SIGND_TEST_BACKEND=postgres "$t" &
	done
	for t in "${SIGND_BUILD:-build}"/tests/test_*; do
		[ -x "$t" ] || continue
		name=$(basename "$t")
		unit_results+=("$name")
		unit_wait_slot
		run_unit "$name" "$t" &
	done
	wait
	for name in "${unit_results[@]}"; do
		echo "== $name"
		cat "$logs/$name.out"
		if [ "$(cat "$logs/$name.rc" 2>/dev/null)" = 0 ]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			echo "FAILED: $name"
		fi
	done
	rm -rf "$logs"
fi

if [ "$what" = all ] || [ "$what" = blackbox ]; then
	echo "== tests/blackbox"
	case "${SIGND_BUILD:-build}" in *asan*) jobs=${SIGND_TEST_JOBS:-3} ;; *) jobs=${SIGND_TEST_JOBS:-4} ;; esac
	parallel=()
	if [ "$jobs" -gt 0 ]; then
		if /usr/bin/python3 -c 'import xdist' 2>/dev/null; then
			parallel=(-n "$jobs" --dist loadfile)
		else
			echo "python3-pytest-xdist is missing (make deps installs it): running serially" >&2
		fi
	fi
	# A base directory of the run's own: pytest makes /tmp/pytest-of-root 0700 again at
	# every session start, which would shut the appliance's accounts out of the tmp_path
	# files conftest.reachable() opened to them if another session started meanwhile.
	base=$(mktemp -d "${TMPDIR:-/tmp}/signd-blackbox-XXXXXX")
	/usr/bin/python3 -m pytest -q -p no:cacheprovider --basetemp="$base/t" "${parallel[@]}" \
		tests/blackbox
	rc=$?
	rm -rf "$base"
	# pytest exits 5 when it collected nothing: that is a failure of the suite, not a pass.
	if [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi

echo "suites: $passed passed, $failed failed"
[ $failed -eq 0 ]
