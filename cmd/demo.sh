#!/usr/bin/env bash
# The talk's demos, run against the broker in EDP_URL (make demo starts a
# private one). Usage: cmd/demo.sh [PATTERN], PATTERN one of: forwarding,
# thread-delegate, ambulance, watch, supervisor, multi-broker (default: all). multi-broker starts
# two more private nodes beside EDP_URL's and stops them at the end.
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

demo_multi_broker() {
  local q="demo.multi.$$" tmp here
  here=$(cd "$(dirname "$0")/.." && pwd)
  tmp=$(mktemp -d /tmp/edp-demo-multi.XXXXXX)
  # shellcheck disable=SC2064
  trap "'$here/tests/broker.sh' stop '$tmp/n2' >/dev/null 2>&1; '$here/tests/broker.sh' stop '$tmp/n3' >/dev/null 2>&1; rm -rf '$tmp'" EXIT
  banner "multi-broker: throughput and capacity over three brokers"
  echo "--- starting two more brokers beside $EDP_URL..."
  "$here/tests/broker.sh" start "$tmp/n2" >/dev/null &
  "$here/tests/broker.sh" start "$tmp/n3" >/dev/null
  wait
  local urls=(--url "$EDP_URL" --url "$(cat "$tmp/n2/url")" --url "$(cat "$tmp/n3/url")")
  echo "--- a receiver drains all three; the sender spreads 45000 orders (stderr: per-broker rates)"
  "$BIN/edp-multi-receiver" "${urls[@]}" --queue "$q" --idle-exit-ms 5000 >/dev/null &
  local recv=$!
  "$BIN/edp-multi-sender" "${urls[@]}" --queue "$q" --count 45000 --rate 3000 &
  local send=$!
  sleep 3
  echo "--- kill -9 broker 1: the sender resends its unconfirmed messages to the others"
  "$here/tests/broker.sh" kill "$tmp/n2"
  echo "--- start broker 1 again: it rejoins the rotation and the receiver resumes it"
  "$here/tests/broker.sh" start "$tmp/n2" >/dev/null
  wait "$send"
  echo "--- the receiver stops after 5 s without a message"
  wait "$recv" || true
}

demo_supervisor() {
  local q="demo.supervisor.$$"
  banner "supervisor consumer: consumers follow the queue depth"
  echo "--- load: 20 msg/s for 3 s, a 200 msg/s burst for 4 s, 20 msg/s for 3 s"
  echo "--- supervisor: 1..10 consumers, one per 20 queued messages, 20 ms work"
  "$BIN/edp-supervisor" --queue "$q" --min 1 --max 10 --per-consumer 20 \
    --interval-ms 1000 --keep-alive-ms 2000 --work-ms 20 --idle-timeout 4000 &
  local sup=$!
  "$BIN/edp-load" --queue "$q" --profile 20:3s,200:4s,20:3s 2>/dev/null
  wait "$sup"
}

demo_ambulance() {
  local mode q
  for mode in fifo carpool ambulance; do
    q="demo.ambulance.$mode.$$"
    banner "ambulance / carpool: --mode $mode, 2 threads, 2000 ms of work each"
    "$BIN/edp-ambulance-receiver" --mode "$mode" --queue "$q" --threads 1 \
      --work-ms 2000 --count 8 &
    local recv=$!
    "$BIN/edp-ambulance-sender" --mode "$mode" --queue "$q"
    wait "$recv"
  done
}

pattern=${1:-all}
case $pattern in
  forwarding) demo_forwarding ;;
  thread-delegate) demo_thread ;;
  watch) demo_watch ;;
  ambulance) demo_ambulance ;;
  supervisor) demo_supervisor ;;
  multi-broker) demo_multi_broker ;;
  all) demo_forwarding; demo_thread; demo_ambulance; demo_watch; demo_supervisor; demo_multi_broker ;;
  *) echo "demo.sh: unknown pattern '$pattern' (forwarding, thread-delegate, ambulance, watch, supervisor, multi-broker)" >&2; exit 64 ;;
esac
