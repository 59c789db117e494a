#!/usr/bin/env bash
# Runs a command against a private RabbitMQ node started for it:
#   tests/with-broker.sh CMD [ARGS...]
# The node lives in a temp dir; EDP_URL and EDP_BROKER_DIR point at it. The
# node is stopped and the dir removed however the command ends (trap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/edp-broker.XXXXXX)
cleanup() {
  "$here/broker.sh" stop "$tmp/node" >/dev/null 2>&1 || "$here/broker.sh" kill "$tmp/node" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "starting a private RabbitMQ node..." >&2
EDP_URL=$("$here/broker.sh" start "$tmp/node")
export EDP_URL EDP_BROKER_DIR="$tmp/node"
echo "broker: $EDP_URL" >&2
set +e
"$@"
rc=$?
set -e
exit $rc
