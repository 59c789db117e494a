#!/usr/bin/env bash
# The talk's demos, run against the broker in EDP_URL (make demo starts a
# private one). Usage: cmd/demo.sh [PATTERN], PATTERN one of: forwarding,
# thread-delegate, watch (default: all).
set -euo pipefail
BIN=${EDP_BIN:-bin}
: "${EDP_URL:?set EDP_URL, or run 'make demo' which starts a private broker}"
export EDP_URL

banner() { printf '\n===== %s =====\n' "$*"; }

demo_forwarding() {
  local q="demo.forward.$$"
  banner "event forwarding: no message lost between two services"
  echo "--- sender.sh: five orders, persistent, confirmed by the broker"
  "$BIN/edp-forward-sender" --queue "$q" \
    "B-123,SELL,AAPL,206 SHARES" "A-136,BUY,IBM,1000 SHARES" \
    "D-945,SELL,AAPL,742 SHARES" "V-976,BUY,ATT,150 SHARES" \
    "C-332,SELL,GOOG,60 SHARES"
  echo "--- receiver: acks only after 'Database commit.'; every 4th attempt fails and is retried"
  "$BIN/edp-forward-receiver" --queue "$q" --work-ms 300 --fail-every 4 \
    --idle-timeout 1500
  echo "--- the receiver crashes in the middle of a message (SIGKILL)..."
  "$BIN/edp-forward-sender" --queue "$q" "E-501,BUY,AMZN,75 SHARES"
  # A coprocess, so that we kill it right when it prints that it started
  # processing (read waits for the line; no guessing with sleep).
  coproc RECV { exec "$BIN/edp-forward-receiver" --queue "$q" --work-ms 60000 --prefetch 1; }
  local pid=$RECV_PID line
  if IFS= read -r -t 30 line <&"${RECV[0]}"; then echo "$line"; fi
  echo "--- kill -9 $pid"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  echo "--- ...and the next receiver gets the message again, redelivered, nothing lost"
  "$BIN/edp-forward-receiver" --queue "$q" --idle-timeout 1500
}

demo_watch() {
  local dir rq
  dir=$(mktemp -d /tmp/edp-demo-watch.XXXXXX)
  rq="demo.config.$$"
  banner "watch notification: a config server notifies services through temporary queues"
  # The server reads 'set KEY VALUE' lines from fd 4; output goes to files
  # that are shown at the end, one program after the other. The pauses pace
  # the demo like the talk's; nothing depends on them.
  exec 4> >(exec "$BIN/edp-config-server" --store "$dir/store.json" \
              --request-queue "$rq" >"$dir/server.out" 2>&1)
  local srv=$!
  "$BIN/edp-watch-service" --name svc1 --request-queue "$rq" >"$dir/svc1.out" 2>&1 &
  local svc1=$!
  "$BIN/edp-watch-service" --name svc2 --request-queue "$rq" >"$dir/svc2.out" 2>&1 &
  local svc2=$!
  sleep 1
  echo "--- config server: set log_level DEBUG"
  echo "set log_level DEBUG" >&4; sleep 1
  echo "--- svc1 dies (SIGKILL): its temporary queue dies with its connection"
  kill -9 "$svc1"; wait "$svc1" 2>/dev/null || true; sleep 1
  echo "--- config server: set log_level WARN"
  echo "set log_level WARN" >&4; sleep 1
  kill "$svc2"; wait "$svc2" 2>/dev/null || true
  kill "$srv"; exec 4>&-
  wait "$srv" 2>/dev/null || true
  echo "--- config server output:"; sed 's/^/    /' "$dir/server.out"
  echo "--- svc1 output:"; sed 's/^/    /' "$dir/svc1.out"
  echo "--- svc2 output:"; sed 's/^/    /' "$dir/svc2.out"
  rm -rf "$dir"
}

demo_thread() {
  local ex="demo.trades.$$" q="demo.trades.$$"
  banner "thread delegate: parallel workers, per-account order kept"
  echo "--- sender.sh: the talk's ten trades, routing key trade.eq.<account>"
  "$BIN/edp-trade-sender" --exchange "$ex" --queue "$q"
  echo "--- dispatcher: 5 worker threads, allocation map (Thread,account,in flight)"
  "$BIN/edp-trade-dispatcher" --exchange "$ex" --queue "$q" --workers 5 \
    --work-ms 300 --display --idle-timeout 1500
}

pattern=${1:-all}
case $pattern in
  forwarding) demo_forwarding ;;
  thread-delegate) demo_thread ;;
  watch) demo_watch ;;
  all) demo_forwarding; demo_thread; demo_watch ;;
  *) echo "demo.sh: unknown pattern '$pattern' (forwarding, thread-delegate, watch)" >&2; exit 64 ;;
esac
