#!/usr/bin/env bash
# The URL tests/broker.sh prints works unchanged in other clients and
# names the same vhost there as in edp: edp publishes two messages with it,
# amqp-tools (rabbitmq-c's CLI) gets one, pika gets the other, the Java
# client (when installed) sees the emptied queue, and rabbitmqctl finds the
# queue in the vhost "/". The same URL with a trailing '/' is the vhost ""
# (RabbitMQ's URI specification): refused alike by amqp-tools and edp.
# Needs EDP_URL, EDP_BROKER_DIR (run-integration.sh) and EDP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EDP_BIN:-bin}
U=${EDP_URL:?run me through tests/run-integration.sh}
PY=/usr/bin/python3 # Debian's python3-pika, not a python on PATH
fail() { echo "FAIL: $*" >&2; exit 1; }
q="edp-url-interop-$$-$RANDOM"
tmp=$(mktemp -d /tmp/edp-interop.XXXXXX)
trap 'amqp-delete-queue --url="$U" -q "$q" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

case $U in amqps://*)
  # amqp-tools and pika take TLS options their own way, not in the URL.
  echo "SKIP: integ_url_interop: plain AMQP only, skipped on a TLS node (make check TLS=1)"
  exit 0 ;;
esac

echo "-- the URL: $U"
case $U in */) fail "broker.sh prints a URL ending in '/' (the vhost \"\")" ;; esac

echo "-- edp publishes"
"$BIN/edp-forward-sender" --url "$U" --queue "$q" one two >/dev/null 2>"$tmp/err" ||
  fail "edp-forward-sender: $(cat "$tmp/err")"

echo "-- amqp-tools $(dpkg-query -W -f='${Version}' amqp-tools) gets one"
body=$(amqp-get --url="$U" -q "$q") || fail "amqp-get failed"
[ "$body" = one ] || fail "amqp-get read '$body', want 'one'"

echo "-- pika $($PY -c 'import pika; print(pika.__version__)') gets the other"
body=$($PY - "$U" "$q" <<'PY'
import sys, pika
p = pika.URLParameters(sys.argv[1])
assert p.virtual_host == "/", p.virtual_host
c = pika.BlockingConnection(p)
ch = c.channel()
_, _, body = ch.basic_get(sys.argv[2], auto_ack=True)
print(body.decode() if body else "")
c.close()
PY
) || fail "pika failed"
[ "$body" = two ] || fail "pika read '$body', want 'two'"

jar=/usr/share/java/amqp-client.jar
if command -v java >/dev/null && [ -f "$jar" ]; then
  echo "-- the Java client $(dpkg-query -W -f='${Version}' librabbitmq-client-java) sees the queue, empty"
  cat > "$tmp/Interop.java" <<'JAVA'
import com.rabbitmq.client.*;
public class Interop {
  public static void main(String[] a) throws Exception {
    ConnectionFactory f = new ConnectionFactory();
    f.setUri(a[0]);
    if (!f.getVirtualHost().equals("/")) throw new Exception("vhost " + f.getVirtualHost());
    try (Connection c = f.newConnection(); Channel ch = c.createChannel()) {
      System.out.println(ch.queueDeclarePassive(a[1]).getMessageCount());
    }
  }
}
JAVA
  n=$(java -cp "$jar:/usr/share/java/slf4j-api.jar" "$tmp/Interop.java" "$U" "$q" 2>"$tmp/jerr") ||
    fail "Java client: $(tail -3 "$tmp/jerr")"
  [ "$n" = 0 ] || fail "Java client counts $n messages, want 0"
else
  echo "-- the Java client: not installed (librabbitmq-client-java and a JRE), skipped"
fi

echo "-- the queue is in the vhost /"
# Read whole before grep: grep -q stopping early would make rabbitmqctl
# fail on the closed pipe (pipefail).
queues=$(tests/broker.sh ctl "${EDP_BROKER_DIR:?}" list_queues -p / name --silent) ||
  fail "rabbitmqctl list_queues failed"
grep -qx "$q" <<<"$queues" || fail "queue $q not in vhost /"

echo "-- with a trailing '/' (the vhost \"\") both refuse"
if amqp-declare-queue --url="$U/" -q "$q" >/dev/null 2>"$tmp/err"; then
  fail "amqp-tools connected to the vhost \"\""
fi
grep -q "vhost not found\|NOT_ALLOWED\|access" "$tmp/err" || fail "amqp-tools: $(cat "$tmp/err")"
rc=0
"$BIN/edp-forward-sender" --url "$U/" --queue "$q" x >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" = 77 ] || fail "edp with the vhost \"\": exit $rc, want 77: $(cat "$tmp/err")"
echo "-- a wrong password holding / ? # @ : % and UTF-8 is never printed"
hostport=${U#*@}
for pw in 'Zk%2F%3F%23%40%3A%25%C3%A9q' 'Zk/q' 'Zk?q' 'Zk#q' 'Zk@q' 'Zk:q' 'Zk%q' 'ZkÃ©q'; do
  pw=$(printf %b "$pw")
  bad="amqp://guest:$pw@$hostport"
  for cmd in "edp-forward-sender --queue $q x" "edp-forward-receiver --queue $q --idle-timeout 100" \
             "edp-multi-sender --queue $q --count 1 --down-max-ms 500" \
             "edp-supervisor --queue $q --idle-timeout 100" "edp-ambulance-receiver --idle-timeout 100"; do
    for json in "" --json; do
      # shellcheck disable=SC2086
      timeout 30 "$BIN/${cmd%% *}" ${cmd#* } --url "$bad" $json >"$tmp/out" 2>&1 || true
      if grep -q Zk "$tmp/out"; then fail "${cmd%% *} $json printed the password of $bad: $(grep Zk "$tmp/out")"; fi
      [ -s "$tmp/out" ] || fail "${cmd%% *} $json said nothing about $bad"
    done
  done
done
echo "ok"
