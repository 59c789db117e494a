#!/usr/bin/env bash
# Every pattern's programs over amqps://: the demos of integ_demo.sh (all
# six, with their order and redelivery checks, the multi-broker one with
# three TLS nodes and a broker killed mid-run) against a TLS node that
# requires client certificates. The URL carries the CA and the client
# certificate; nothing else changes. Needs EDP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
export EDP_TLS=1 # every node started from here on is a TLS node
# shellcheck disable=SC2016
exec tests/with-broker.sh bash -c '
  case $EDP_URL in amqps://*) ;; *) echo "FAIL: not a TLS node: $EDP_URL" >&2; exit 1 ;; esac
  exec tests/integ_demo.sh'
