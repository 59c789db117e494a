#!/usr/bin/env bash
# Runs the integration suites (arguments) against one private node, started
# and stopped by with-broker.sh. Each suite uses its own queue names, so they
# can share the node. Exit status: 0 if all passed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || { echo "run-integration.sh: no suites given" >&2; exit 64; }
# shellcheck disable=SC2016
exec "$here/with-broker.sh" bash -c '
  fail=0
  for t in "$@"; do
    echo "== $t"
    if ! timeout 900 "$t"; then echo "FAILED: $t"; fail=1; fi
  done
  exit $fail' run-integration "$@"
