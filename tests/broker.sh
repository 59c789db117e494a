#!/usr/bin/env bash
# Private RabbitMQ nodes for tests, demos and benchmarks.
#
#   tests/broker.sh start DIR      start a node whose files live in DIR, print its URL
#                                  (with EDP_TLS=1 a new node is a TLS node, as below;
#                                  EDP_TLS=both: the same plus a plain listener, whose
#                                  URL it prints; the amqps:// one is in DIR/url-tls)
#   tests/broker.sh start-tls DIR  the same as a TLS node, as production runs one: TLS
#                                  listener only, client certificates required (see
#                                  make_certs and tls_config below); prints its
#                                  amqps:// URL (with the CA and a client certificate)
#   tests/broker.sh stop DIR       stop it gracefully (data kept in DIR)
#   tests/broker.sh restart DIR    stop, then start again on the same ports and data
#   tests/broker.sh kill DIR       SIGKILL the node (a crash); 'start DIR' revives it
#   tests/broker.sh url DIR        print the URL of the node in DIR
#   tests/broker.sh ctl DIR ARGS   run rabbitmqctl against that node
#   tests/broker.sh join DIR OTHER_DIR
#                                  make the node in DIR join OTHER_DIR's
#                                  cluster (stop_app, reset, join_cluster,
#                                  start_app); both must share one epmd
#                                  (EDP_EPMD_PORT) and the Erlang cookie
#                                  (~/.erlang.cookie: same user)
#   tests/broker.sh certs DIR [HOST [USER]]
#                                  only make the test certificates (below) in DIR,
#                                  the server's for HOST too, the client's for USER
#                                  (the compose stack's TLS override uses them)
#   tests/broker.sh close-conns DIR [NAME]
#                                  close client connections (those whose
#                                  connection_name is NAME), as a broker would
#
# Every node gets free ports, its own data and log dirs under DIR and is
# stopped by its own pid file, so the harness never touches a broker it did
# not start. Waits are bounded (EDP_BROKER_WAIT_S, default 120 s: three
# nodes starting at once on a busy 2-core machine once took over 60 s).
# Environment: EDP_EPMD_PORT (default 4369) selects the epmd the node
# registers with; nodes that must form a cluster share one.
set -euo pipefail

RMQ=/usr/lib/rabbitmq/bin
WAIT_S=${EDP_BROKER_WAIT_S:-120}

die() { echo "broker.sh: $*" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p" && port_free $((p + 20000 > 65000 ? p - 15000 : p + 20000)); then
      echo "$p"; return 0
    fi
  done
  die "no free port found"
}

node_env() {
  local dir=$1
  # shellcheck disable=SC1091
  . "$dir/node.env"
  export RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_PORT=$PORT
  export RABBITMQ_DIST_PORT=$DIST_PORT
  export RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_PID_FILE=$dir/pid
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export ERL_EPMD_PORT=$EPMD_PORT
  # Keep the node small: it shares two cores with the tests.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 2:2 +A 8"
}

ctl() { "$RMQ/rabbitmqctl" -n "$NODE" "$@"; }

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ ! -f "$dir/node.env" ]; then
    local port; port=$(free_port)
    local dist=$((port + 20000 > 65000 ? port - 15000 : port + 20000))
    cat > "$dir/node.env" <<ENV
NODE=edp$port@localhost
PORT=$port
DIST_PORT=$dist
EPMD_PORT=${EDP_EPMD_PORT:-4369}
ENV
    # The tests' limit is 4 MiB (small oversize bodies); the benchmark
    # sets RabbitMQ 4.x's default, 16 MiB, for its 16 MiB bodies.
    cat > "$dir/rabbitmq.conf" <<CONF
loopback_users = none
log.file.level = warning
log.console = false
max_message_size = ${EDP_BROKER_MAX_MESSAGE:-4194304}
CONF
    echo '[rabbitmq_consistent_hash_exchange].' > "$dir/enabled_plugins"
    case ${EDP_TLS:-0} in
      1) tls_config "$dir"; echo "listeners.tcp = none" >> "$dir/rabbitmq.conf" ;;
      both) tls_config "$dir"; echo "listeners.tcp.default = 127.0.0.1:$port" >> "$dir/rabbitmq.conf" ;;
      *) echo "listeners.tcp.default = 127.0.0.1:$port" >> "$dir/rabbitmq.conf" ;;
    esac
    echo '[].' > "$dir/advanced.config"
    mkdir -p "$dir/mnesia" "$dir/log"
  fi
  node_env "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "node in $dir already runs (pid $(cat "$dir/pid"))"
  fi
  rm -f "$dir/pid"
  "$RMQ/rabbitmq-server" -detached >>"$dir/log/start.out" 2>&1 || true
  if ! timeout "$WAIT_S" "$RMQ/rabbitmqctl" -n "$NODE" wait "$dir/pid" \
       --timeout "$WAIT_S" >>"$dir/log/start.out" 2>&1; then
    echo "broker.sh: node $NODE did not start within ${WAIT_S}s; last log lines:" >&2
    tail -n 20 "$dir/log/start.out" "$dir"/log/*.log 2>/dev/null >&2 || true
    kill_node "$dir"
    exit 1
  fi
  # The node is up; make sure its listeners are too (bounded).
  local p
  for p in $(grep -o '127.0.0.1:[0-9]*$' "$dir/rabbitmq.conf" | cut -d: -f2); do
    for _ in $(seq 1 100); do port_free "$p" || break; sleep 0.1; done
    if port_free "$p"; then die "node $NODE is up but does not listen on $p"; fi
  done
  # No trailing slash: a path is the vhost (RabbitMQ URI specification),
  # and "/" would be the vhost "" for amqp-tools, pika and the Java client.
  echo "amqp://guest:guest@127.0.0.1:$PORT" > "$dir/url"
  if [ -n "${TLS_PORT:-}" ]; then
    local t=$dir/tls
    echo "amqps://guest:guest@localhost:$TLS_PORT?cacertfile=$t/ca.pem&certfile=$t/client.pem&keyfile=$t/client.key" > "$dir/url-tls"
    if grep -q '^listeners.tcp = none' "$dir/rabbitmq.conf"; then cp "$dir/url-tls" "$dir/url"; fi
  fi
  cat "$dir/url"
}

# Test certificates in DIR/tls, made with openssl (EC P-256, 30 days):
#   ca.pem                 the CA the node trusts and the clients verify with
#   server.pem/.key        CN=localhost, SAN DNS:localhost and IP:127.0.0.1
#                          (and DNS:HOST when given)
#   server-expired.pem/.key the same names, valid for one day ten days ago
#   client.pem/.key        CN=edp-tls-user (a user the tests create), or USER
#   nouser.pem/.key        CN=edp-no-such-user (a user that never exists)
#   other-ca.pem           an unrelated CA, and other-client.pem/.key
#                          (CN=edp-tls-user) signed by it
make_certs() {
  local t=$1 host=${2:-} user=${3:-edp-tls-user}
  mkdir -p "$t"
  (
    cd "$t"
    ossl() { openssl "$@" 2>>openssl.log; }
    newkey() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    mkca() { # name cn
      newkey "$1.key"
      ossl req -x509 -new -key "$1.key" -out "$1.pem" -days 30 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
    }
    issue() { # name cn ca ext
      newkey "$1.key"
      ossl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2"
      printf '%s\n' "$4" > "$1.ext"
      ossl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial "0x$(openssl rand -hex 8)" \
        -days 30 -extfile "$1.ext" -out "$1.pem"
    }
    srv='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1'"${host:+,DNS:$host}"
    cli='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'
    mkca ca edp-test-ca
    mkca other-ca edp-unrelated-ca
    issue server localhost ca "$srv"
    issue client "$user" ca "$cli"
    issue nouser edp-no-such-user ca "$cli"
    issue other-client edp-tls-user other-ca "$cli"
    # An expired server certificate needs a start date in the past, which
    # only 'openssl ca' sets.
    mkdir -p expca && : > expca/index.txt
    cat > expca/ca.cnf <<CNF
[ca]
default_ca = x
[x]
database = expca/index.txt
new_certs_dir = expca
serial = expca/serial
default_md = sha256
policy = p
copy_extensions = none
x509_extensions = e
[p]
commonName = supplied
[e]
$srv
CNF
    openssl rand -hex 8 > expca/serial
    newkey server-expired.key
    ossl req -new -key server-expired.key -out server-expired.csr -subj /CN=localhost
    ossl ca -batch -config expca/ca.cnf -cert ca.pem -keyfile ca.key \
      -startdate "$(date -u -d '-10 days' +%y%m%d%H%M%SZ)" \
      -enddate "$(date -u -d '-9 days' +%y%m%d%H%M%SZ)" \
      -in server-expired.csr -out server-expired.pem
    chmod 600 ./*.key
  ) || die "making test certificates in $t failed (see $t/openssl.log)"
}

# A TLS node as a bank would run one: a TLS listener on 127.0.0.1 and no
# plain one (the caller adds listeners.tcp = none: RABBITMQ_NODE_PORT still
# names PORT, but nothing opens there), TLS 1.2 and 1.3 only, client certificates verified
# and required (fail_if_no_peer_cert), and EXTERNAL login by the client
# certificate's CN (rabbitmq_auth_mechanism_ssl) beside PLAIN.
tls_config() {
  local dir=$1
  command -v openssl >/dev/null || die "a TLS node needs openssl"
  # shellcheck disable=SC1091
  . "$dir/node.env"
  local tport
  for _ in $(seq 1 50); do
    tport=$(free_port); [ "$tport" != "$PORT" ] && [ "$tport" != "$DIST_PORT" ] && break
  done
  echo "TLS_PORT=$tport" >> "$dir/node.env"
  make_certs "$dir/tls"
  cat >> "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$tport
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = EXTERNAL
ssl_cert_login_from = common_name
CONF
  echo '[rabbitmq_consistent_hash_exchange,rabbitmq_auth_mechanism_ssl].' > "$dir/enabled_plugins"
}

kill_node() {
  local dir=$1
  if [ -f "$dir/pid" ]; then
    local pid; pid=$(cat "$dir/pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
}

stop() {
  local dir=$1
  [ -f "$dir/node.env" ] || die "no node in $dir"
  node_env "$dir"
  [ -f "$dir/pid" ] || return 0
  local pid; pid=$(cat "$dir/pid")
  if kill -0 "$pid" 2>/dev/null; then
    timeout "$WAIT_S" "$RMQ/rabbitmqctl" -n "$NODE" stop "$dir/pid" \
      >>"$dir/log/start.out" 2>&1 || kill_node "$dir"
  fi
  rm -f "$dir/pid"
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: broker.sh start|start-tls|stop|restart|kill|url|ctl DIR [ARGS]"
case $cmd in
  start) start "$dir" ;;
  start-tls) EDP_TLS=1 start "$dir" ;;
  certs) make_certs "$dir" "${3:-}" "${4:-}" ;;
  stop) stop "$dir" ;;
  restart) stop "$dir"; start "$dir" ;;
  kill) kill_node "$dir" ;;
  url) cat "$dir/url" ;;
  ctl) shift 2; node_env "$dir"; ctl "$@" ;;
  join)
    other=${3:-}; [ -f "$other/node.env" ] || die "join: no node in '$other'"
    node_env "$other"; target=$NODE; node_env "$dir"
    for step in stop_app reset "join_cluster $target" start_app; do
      # shellcheck disable=SC2086
      timeout "$WAIT_S" "$RMQ/rabbitmqctl" -n "$NODE" $step >>"$dir/log/start.out" 2>&1 ||
        die "join: '$step' failed on $NODE (see $dir/log/start.out)"
    done ;;
  close-conns)
    node_env "$dir"; name=${3:-}; n=0
    while IFS=$'\t' read -r pid props; do
      [ -n "$pid" ] || continue
      if [ -z "$name" ] || [[ $props == *"{\"connection_name\",\"$name\"}"* ]]; then
        ctl close_connection "$pid" "closed by the edp test harness" >/dev/null && n=$((n + 1))
      fi
    done < <(ctl list_connections pid client_properties --no-table-headers --silent)
    echo "$n" ;;
  *) die "unknown command $cmd" ;;
esac
