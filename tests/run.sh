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
# Those whose store is not ported to sdb yet (issue 20): skipped on PostgreSQL, named in
# the output; SIGND_TEST_PENDING=1 runs them anyway (their failures then count).
PENDING_ON_POSTGRES=""

if [ "$what" = all ] || [ "$what" = unit ]; then
	for t in "${SIGND_BUILD:-build}"/tests/test_*; do
		[ -x "$t" ] || continue
		echo "== $t"
		if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
	done
	for name in $STORE_SUITES; do
		t="${SIGND_BUILD:-build}/tests/$name"
		[ -x "$t" ] || continue
		case " $(echo $PENDING_ON_POSTGRES) " in
		*" $name "*)
			if [ "${SIGND_TEST_PENDING:-0}" != 1 ]; then
				echo "== $t on postgres: pending (its store is not ported to sdb yet)"
				continue
			fi
			;;
		esac
		echo "== $t on postgres"
		if SIGND_TEST_BACKEND=postgres "$t"; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			echo "FAILED: $t on postgres"
		fi
	done
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
