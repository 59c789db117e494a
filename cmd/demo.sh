#!/usr/bin/env bash
# The talk's demos, run against the broker in EDP_URL (make demo starts a
# private one). Usage: cmd/demo.sh [PATTERN], PATTERN one of: forwarding
# (default: all).
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

pattern=${1:-all}
case $pattern in
  forwarding) demo_forwarding ;;
  all) demo_forwarding ;;
  *) echo "demo.sh: unknown pattern '$pattern' (forwarding)" >&2; exit 64 ;;
esac
