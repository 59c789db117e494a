#!/usr/bin/env bash
# make fuzz: runs each libFuzzer binary (arguments, build/fuzz/fuzz_<name>)
# for SECONDS on a copy of its seed corpus tests/fuzz/<name>/ (new inputs
# stay in the copy, never in the repository), with tests/fuzz/<name>.dict
# and the libFuzzer flags in tests/fuzz/<name>.options (one line) when
# there are. Prints the executions per target; a crash, leak or
# timeout is copied to build/fuzz/crashes/<name>/ and fails the run (keep
# it in tests/fuzz/<name>/ once fixed: make check replays it). FUZZ_SEED
# in the environment fixes libFuzzer's random seed (-seed=N): every run
# with it tries the same inputs in the same order, a slower machine only
# fewer of them.
set -uo pipefail
secs=${1:?usage: run.sh SECONDS BINARY...}; shift
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../.." && pwd)/build/fuzz
tmp=$(mktemp -d /tmp/edp-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failed=0
printf '%-20s %12s %10s  %s\n' target executions exec/s result
for bin in "$@"; do
  name=$(basename "$bin"); name=${name#fuzz_}
  mkdir -p "$tmp/$name/corpus" "$tmp/$name/art"
  [ -d "$here/$name" ] && cp -r "$here/$name/." "$tmp/$name/corpus/"
  dict=(); [ -f "$here/$name.dict" ] && dict=("-dict=$here/$name.dict")
  # shellcheck disable=SC2207
  [ -f "$here/$name.options" ] && dict+=($(cat "$here/$name.options"))
  [ -n "${FUZZ_SEED-}" ] && dict+=("-seed=$FUZZ_SEED")
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$tmp/$name/art/" "${dict[@]}" \
    "$tmp/$name/corpus" >"$tmp/$name/log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$name/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$tmp/$name/log" | tail -1)
  result=ok
  if [ "$rc" != 0 ] || [ -n "$(ls -A "$tmp/$name/art")" ]; then
    result="FAILED (exit $rc)"; failed=1
    mkdir -p "$out/crashes/$name"
    cp "$tmp/$name/art/"* "$out/crashes/$name/" 2>/dev/null
    cp "$tmp/$name/log" "$out/crashes/$name/log"
    # The harness's own message (what it found), then the sanitizer's.
    grep -m3 "^fuzz_$name: " "$tmp/$name/log" >&2
    grep -m1 -A12 'ERROR: \|runtime error\|Timeout\|leak' "$tmp/$name/log" >&2
    echo "   inputs and log in $out/crashes/$name/" >&2
  fi
  printf '%-20s %12s %10s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "$result"
done
exit $failed
