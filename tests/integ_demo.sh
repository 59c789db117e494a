#!/usr/bin/env bash
# Every demo of `make demo` run as a test: its output must hold the lines
# the talk's demo shows, in the order the pattern promises. Needs EDP_URL
# (run-integration.sh) and EDP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d /tmp/edp-demo-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; sed 's/^/    | /' "$out" >&2; exit 1; }

# shellcheck source=tests/demo-checks.sh
. tests/demo-checks.sh

run_demo() {
  out="$tmp/$1.out"
  echo "-- demo $1"
  timeout 300 cmd/demo.sh "$1" >"$out" 2>&1 || fail "demo $1 exited $?"
}

run_demo forwarding
check_forwarding "$out"
check_forwarding_crash "$out"

run_demo thread-delegate
check_thread_delegate "$out"

run_demo ambulance
awk '/--mode fifo/{f=1} /--mode carpool/{f=0} f' "$out" > "$tmp/fifo"
awk '/--mode carpool/{f=1} /--mode ambulance,/{f=0} f' "$out" > "$tmp/carpool"
awk '/--mode ambulance,/{f=1} f' "$out" > "$tmp/ambulance"
for mode in fifo carpool ambulance; do check_ambulance "$mode" "$tmp/$mode"; done

run_demo watch
check_watch "$out"

run_demo supervisor
check_supervisor "$out"

run_demo multi-broker
check_multi_broker "$out" 45000
echo "demos: all passed"
