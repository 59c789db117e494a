#!/usr/bin/env bash
# Every demo of `make demo` run as a test: its output must hold the lines
# the talk's demo shows, in the order the pattern promises. Needs EDP_URL
# (run-integration.sh) and EDP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d /tmp/edp-demo-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; sed 's/^/    | /' "$out" >&2; exit 1; }

# expect_order FILE RE1 RE2 ...: each extended regex matches a line, each
# after the line the previous one matched.
expect_order() {
  local file=$1 last=0 re n
  shift
  for re in "$@"; do
    n=$(awk -v start="$last" -v re="$re" 'NR > start && $0 ~ re { print NR; exit }' "$file")
    [ -n "$n" ] || fail "no line matching /$re/ after line $last"
    last=$n
  done
}

run_demo() {
  out="$tmp/$1.out"
  echo "-- demo $1"
  timeout 300 cmd/demo.sh "$1" >"$out" 2>&1 || fail "demo $1 exited $?"
}

run_demo forwarding
expect_order "$out" '^sending: \(1\) B-123,SELL,AAPL,206 SHARES' '^sending: \(5\) C-332' \
  '^Processing message: B-123' '^Database commit\.' '^Error processing message\.' \
  '^Processing message: V-976' '^Database commit\.'
expect_order "$out" 'kill -9' '^Processing message: E-501.*\(redelivered\)' '^Database commit\.'

run_demo thread-delegate
[ "$(grep -c '^sending: (' "$out")" = 10 ] || fail "not 10 trades sent"
[ "$(grep -c '^Thread [0-9]: Placed (' "$out")" = 10 ] || fail "not 10 trades placed"
grep -Eq '^Thread-[0-9],[A-Z]-[0-9]+,[0-9]+$' "$out" || fail "no allocation map line"
# per account, placed in the order sent
for acct in $(grep -o '^sending: ([0-9]*) [A-Z]-[0-9]*' "$out" | awk '{print $3}' | sort -u); do
  sent=$(grep "^sending: ([0-9]*) $acct," "$out" | grep -o '([0-9]*)' | tr -d '()' | tr '\n' ' ')
  placed=$(grep "^Thread [0-9]: Placed ([0-9]*) $acct," "$out" | grep -o '([0-9]*)' | tr -d '()' | tr '\n' ' ')
  [ "$sent" = "$placed" ] || fail "account $acct sent '$sent' but placed '$placed'"
done
# the map is empty at the end: each account's last line says 0 in flight
for acct in $(grep -Eo '^Thread-[0-9]+,[A-Z]-[0-9]+' "$out" | cut -d, -f2 | sort -u); do
  grep -E "^Thread-[0-9]+,$acct," "$out" | tail -1 | grep -q ',0$' || fail "$acct still mapped"
done

run_demo ambulance
fifo=$(awk '/--mode fifo/{f=1} /--mode carpool/{f=0} f' "$out")
carpool=$(awk '/--mode carpool/{f=1} /--mode ambulance,/{f=0} f' "$out")
amb=$(awk '/--mode ambulance,/{f=1} f' "$out")
printf '%s\n' "$fifo" > "$tmp/fifo"; printf '%s\n' "$carpool" > "$tmp/carpool"; printf '%s\n' "$amb" > "$tmp/amb"
for f in fifo carpool amb; do
  [ "$(grep -c '^Processing message:' "$tmp/$f")" = 8 ] || fail "$f: not 8 messages processed"
done
# fifo: P1 only after S1..S3
expect_order "$tmp/fifo" 'Processing message: Standard Message S3' 'Processing message: Priority Message P1'
# carpool: P1 on the priority thread, before S3 starts
expect_order "$tmp/carpool" 'Processing message: Priority Message P1 .*\[PRIORITY THREAD\]' \
  'Processing message: Standard Message S3'
# ambulance: P1 is the next message the priority thread starts after it was sent
p1_next=$(awk '/^Sending Priority Message P1/{s=1} s && /\[PRIORITY THREAD\]/{print; exit}' "$tmp/amb")
[[ $p1_next == *"Priority Message P1"* ]] || fail "ambulance: priority thread started '$p1_next' after P1 was sent"

run_demo watch
expect_order "$out" '^--- config server output:' 'Registered service svc1' \
  'Config log_level changed \(version 1\)' 'Config log_level changed \(version 2\)' \
  '^ *Service not found: amq\.gen-' '^ *Removing service from registry'
expect_order "$out" '^--- svc1 output:' 'New Config Value Received: log_level = DEBUG' '^--- svc2 output:' \
  'New Config Value Received: log_level = DEBUG' 'New Config Value Received: log_level = WARN'
[ "$(awk '/^--- svc1 output:/{f=1} /^--- svc2 output:/{f=0} f' "$out" | grep -c 'WARN')" = 0 ] \
  || fail "the dead svc1 got WARN"

run_demo supervisor
expect_order "$out" '^consumers: 1, pending msgs: [0-9]+$' '^Starting consumer\.\.\.' \
  '^consumers: ([2-9]|10), pending msgs: [0-9]+$' '^Removing consumer\.\.\.' '^consumers: 1, pending msgs: [0-9]+$'
grep -q 'processed [1-9]' "$out" || fail "supervisor processed nothing"

run_demo multi-broker
grep -Eq 'broker 0: [0-9]+ msg/sec' "$out" || fail "no per-broker rate lines"
grep -Eq '45000 sent, 45000 confirmed' "$out" || fail "not every message confirmed"
echo "demos: all passed"
