#!/usr/bin/env bash
# The checks of the talk's demos, shared by tests/integ_demo.sh (the
# output of `make demo`) and tests/compose-check.sh (the compose stack's
# logs, put in the same shape): each takes the file with a demo's output
# and calls the caller's fail() with the reason when a line the talk's
# demo shows is missing or out of order. Sourced, not run.

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

# The sender.sh lines of the talk's five orders, then the receiver's:
# processed, committed, a failed attempt, the rest committed.
check_forwarding() {
  expect_order "$1" '^sending: \(1\) B-123,SELL,AAPL,206 SHARES' '^sending: \(5\) C-332' \
    '^Processing message: B-123' '^Database commit\.' '^Error processing message\.' \
    '^Processing message: V-976' '^Database commit\.'
}

# The receiver killed in the middle of a message: the next one gets it
# again, redelivered.
check_forwarding_crash() {
  expect_order "$1" 'kill -9' '^Processing message: E-501.*\(redelivered\)' '^Database commit\.'
}

# The talk's ten trades: all placed, per account in the order sent, the
# allocation map shown and empty at the end.
check_thread_delegate() {
  local out=$1 acct sent placed
  [ "$(grep -c '^sending: (' "$out")" = 10 ] || fail "not 10 trades sent"
  [ "$(grep -c '^Thread [0-9]: Placed (' "$out")" = 10 ] || fail "not 10 trades placed"
  grep -Eq '^Thread-[0-9],[A-Z]-[0-9]+,[0-9]+$' "$out" || fail "no allocation map line"
  for acct in $(grep -o '^sending: ([0-9]*) [A-Z]-[0-9]*' "$out" | awk '{print $3}' | sort -u); do
    sent=$(grep "^sending: ([0-9]*) $acct," "$out" | grep -o '([0-9]*)' | tr -d '()' | tr '\n' ' ')
    placed=$(grep "^Thread [0-9]: Placed ([0-9]*) $acct," "$out" | grep -o '([0-9]*)' | tr -d '()' | tr '\n' ' ')
    [ "$sent" = "$placed" ] || fail "account $acct sent '$sent' but placed '$placed'"
  done
  # the map is empty at the end: each account's last line says 0 in flight
  for acct in $(grep -Eo '^Thread-[0-9]+,[A-Z]-[0-9]+' "$out" | cut -d, -f2 | sort -u); do
    grep -E "^Thread-[0-9]+,$acct," "$out" | tail -1 | grep -q ',0$' || fail "$acct still mapped"
  done
}

# One mode of the ambulance demo (the sender's S1 S2 S3 P1 S4 S5 S6 P2
# and the receiver's lines with T= timings): all eight processed; fifo
# serves P1 only after S3; carpool serves P1 on the priority thread
# before S3 starts; ambulance: P1 is the next message the priority thread
# starts after it was sent.
check_ambulance() {
  local mode=$1 out=$2 p1_next
  [ "$(grep -c '^Processing message:.*(T=[0-9]*)' "$out")" = 8 ] || fail "$mode: not 8 messages processed"
  case $mode in
    fifo) expect_order "$out" 'Processing message: Standard Message S3' 'Processing message: Priority Message P1' ;;
    carpool) expect_order "$out" 'Processing message: Priority Message P1 .*\[PRIORITY THREAD\]' \
      'Processing message: Standard Message S3' ;;
    ambulance)
      p1_next=$(awk '/^Sending Priority Message P1/{s=1} s && /\[PRIORITY THREAD\]/{print; exit}' "$out")
      [[ $p1_next == *"Priority Message P1"* ]] || fail "ambulance: priority thread started '$p1_next' after P1 was sent" ;;
  esac
}

# The watch demo's output: the config server's, svc1's and svc2's, each
# after a '--- NAME output:' line. Both services get DEBUG; svc1 dies;
# WARN finds its queue gone and removes it; only svc2 gets WARN.
check_watch() {
  local out=$1
  expect_order "$out" '^--- config server output:' 'Registered service svc1' \
    'Config log_level changed \(version 1\)' 'Config log_level changed \(version 2\)' \
    '^ *Service not found: amq\.gen-' '^ *Removing service from registry'
  expect_order "$out" '^--- svc1 output:' 'New Config Value Received: log_level = DEBUG' '^--- svc2 output:' \
    'New Config Value Received: log_level = DEBUG' 'New Config Value Received: log_level = WARN'
  [ "$(awk '/^--- svc1 output:/{f=1} /^--- svc2 output:/{f=0} f' "$out" | grep -c 'WARN')" = 0 ] \
    || fail "the dead svc1 got WARN"
}

# The supervisor's monitor lines: one consumer, more for the burst, back
# to one after the keep-alive; and messages processed.
check_supervisor() {
  expect_order "$1" '^consumers: 1, pending msgs: [0-9]+$' '^Starting consumer\.\.\.' \
    '^consumers: ([2-9]|[1-9][0-9]), pending msgs: [0-9]+$' '^Removing consumer\.\.\.' \
    '^consumers: 1, pending msgs: [0-9]+$'
  grep -q 'processed [1-9]' "$1" || fail "supervisor processed nothing"
}

# The multi-broker sender's per-broker rates and its summary: COUNT sent,
# COUNT confirmed (a broker was killed and revived meanwhile).
check_multi_broker() {
  grep -Eq 'broker 0: [0-9]+ msg/sec' "$1" || fail "no per-broker rate lines"
  grep -Eq "$2 sent, $2 confirmed" "$1" || fail "not every message confirmed"
}
