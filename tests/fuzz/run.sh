#!/usr/bin/env bash
# Runs libFuzzer targets one after the other: tests/fuzz/run.sh SECONDS BUILD_DIR NAME...
# (`make fuzz [FUZZ_SECONDS=N]` builds BUILD_DIR/fuzz_<name> and calls this).
#
# Each target starts from a scratch copy of its seeds (tests/fuzz/corpus/<name>/ and
# tests/fuzz/regressions/<name>/), so a run never writes into the repository, with
# tests/fuzz/<name>.dict as its dictionary and the flags in tests/fuzz/<name>.options
# (one a line) when those exist. A crash, a sanitizer report, a leak, a timeout or running
# out of memory is a finding: the run goes on to the next target, keeps the input under
# BUILD_DIR/findings/<name>/ and the log as BUILD_DIR/fuzz_<name>.log, and fails at the
# end. The last lines are one table: per target the inputs run, the corpus it ended with
# and the outcome.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 3 ]; then
	echo "usage: $0 SECONDS BUILD_DIR NAME..." >&2
	exit 2
fi
secs=$1
build=$2
shift 2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/signd-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# UBSan reports must stop the run (the code is also built with -fno-sanitize-recover).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=0
rows=()
for name in "$@"; do
	bin=$build/fuzz_$name
	corpus=$scratch/$name
	findings=$build/findings/$name
	log=$build/fuzz_$name.log
	mkdir -p "$corpus" "$findings"
	for dir in tests/fuzz/corpus/$name tests/fuzz/regressions/$name; do
		[ -d "$dir" ] || continue
		find "$dir" -maxdepth 1 -type f ! -name '.*' ! -name '*.note' -exec cp {} "$corpus"/ \;
	done
	opts=()
	[ -f "tests/fuzz/$name.dict" ] && opts+=("-dict=tests/fuzz/$name.dict")
	if [ -f "tests/fuzz/$name.options" ]; then
		while read -r o; do
			case "$o" in '' | '#'*) ;; *) opts+=("$o") ;; esac
		done <"tests/fuzz/$name.options"
	fi
	echo "== fuzz_$name: ${secs}s, $(find "$corpus" -type f | wc -l) seeds, log $log"
	"$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$findings/" "${opts[@]}" "$corpus" >"$log" 2>&1
	rc=$?
	# The final stats when the run ended by itself, else the last progress line.
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	[ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
	kept=$(find "$corpus" -type f | wc -l)
	if [ $rc -eq 0 ]; then
		outcome=clean
	else
		failed=1
		what=$(grep -m1 -o 'SUMMARY: [A-Za-z]*Sanitizer: [^ ]*\|ERROR: libFuzzer: [a-z-]*\|fuzz_[a-z]*: .*' "$log")
		outcome="FINDING (exit $rc) ${what:-see the log}; input in $findings/"
		tail -n 40 "$log"
	fi
	rows+=("$(printf '%-10s %12s %8s  %s' "$name" "${runs:-?}" "$kept" "$outcome")")
done

echo
echo "fuzz summary (${secs}s per target)"
printf '%-10s %12s %8s  %s\n' target runs corpus outcome
for r in "${rows[@]}"; do
	echo "$r"
done
exit $failed
