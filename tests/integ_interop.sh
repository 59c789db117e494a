#!/usr/bin/env bash
# Interop: foreign clients (Debian's python3-pika) take part in every
# pattern from docs/wire.md alone, feeding edp's consumers and reading
# edp's producers (tests/interop/*.py, one script per pattern), and the
# Java client 5.0 in two of them (java_client.py: skipped, saying so,
# without a JDK or librabbitmq-client-java). Needs
# EDP_URL and EDP_BROKER_DIR (run-integration.sh) and EDP_BIN. Skips only
# when python3-pika is missing (`make deps` installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's interpreter, the one python3-pika installs for (a python3
# earlier in PATH, e.g. pyenv's, does not see it).
PY=${EDP_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import pika' 2>/dev/null; then
  echo "SKIP: integ_interop: python3-pika is not installed for $PY (make deps installs it)"
  exit 0
fi
export EDP_BIN=${EDP_BIN:-bin}
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the tree
: "${EDP_URL:?EDP_URL must name the test broker}"
case $EDP_URL in amqps://*)
  # The foreign clients speak plain AMQP here; TLS is integ_tls's.
  echo "SKIP: integ_interop: plain AMQP only, skipped on a TLS node (make check TLS=1)"
  exit 0 ;;
esac
: "${EDP_BROKER_DIR:?EDP_BROKER_DIR must name the test node (tests/broker.sh)}"

# The multi-broker script's second broker: a vhost of the test node, made
# while the other scripts run (rabbitmqctl takes seconds).
vhost="edp-interop-$$"
user=$("$PY" -c 'import os, urllib.parse; print(urllib.parse.unquote(urllib.parse.urlsplit(os.environ["EDP_URL"]).username or "guest"))')
setup_log=$(mktemp /tmp/edp-interop-vhost.XXXXXX)
(tests/broker.sh ctl "$EDP_BROKER_DIR" add_vhost "$vhost" &&
  tests/broker.sh ctl "$EDP_BROKER_DIR" set_permissions -p "$vhost" "$user" '.*' '.*' '.*') \
  >"$setup_log" 2>&1 &
vhost_setup=$!
cleanup() {
  wait "$vhost_setup" 2>/dev/null || true
  tests/broker.sh ctl "$EDP_BROKER_DIR" delete_vhost "$vhost" >/dev/null 2>&1 || true
  rm -f "$setup_log"
}
trap cleanup EXIT
export EDP_INTEROP_VHOSTS="/,$vhost"

start=$(date +%s)
echo "pika $("$PY" -c 'import pika; print(pika.__version__)') with $PY"
for script in forwarding thread_delegate ambulance watch supervisor java_client multi_broker; do
  echo "-- $script"
  if [ $script = multi_broker ]; then
    wait "$vhost_setup" || { echo "FAIL: cannot make vhost $vhost:" >&2; cat "$setup_log" >&2; exit 1; }
  fi
  timeout 120 "$PY" "tests/interop/$script.py" || { echo "FAIL: interop $script" >&2; exit 1; }
done
echo "ok: interop suite in $(($(date +%s) - start)) s"
