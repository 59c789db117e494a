#!/usr/bin/env bash
# Runs a command against a private RabbitMQ node started for it:
#   tests/with-broker.sh CMD [ARGS...]
# The node lives in a temp dir; EDP_URL and EDP_BROKER_DIR point at it
# (EDP_TLS=1: a TLS node, EDP_URL is amqps://; EDP_TLS=both: plain and
# TLS listeners, EDP_URL is the plain one, EDP_URL_TLS the other). The
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
if [ "${EDP_TLS:-0}" = both ]; then EDP_URL_TLS=$(cat "$tmp/node/url-tls"); export EDP_URL_TLS; fi
echo "broker: $EDP_URL" >&2
set +e
"$@"
rc=$?
set -e
exit $rc
