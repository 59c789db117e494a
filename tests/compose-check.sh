#!/usr/bin/env bash
# make compose-check: the demo stack of docker-compose.yml run for real,
# as a user runs it (`docker compose --profile P up`), one profile after
# the other on a fresh broker each, every demo's output checked with the
# checks tests/integ_demo.sh applies to `make demo` (tests/demo-checks.sh),
# then everything torn down: containers, networks, volumes, and the API
# service and health-check loop tests/container-engine.sh started.
#
#   tests/compose-check.sh              every profile, then the TLS override
#   EDP_COMPOSE_PROFILES="watch ambulance"   only those
#   EDP_COMPOSE_SKIP="multi-broker"     all but those (named, so reported)
#   EDP_COMPOSE_TLS=0                   without the TLS override run
#   EDP_COMPOSE_PROFILES=metrics EDP_COMPOSE_TLS=0   the metrics run alone
#
# The metrics profile runs together with forwarding (its Prometheus
# scrapes the forward-receiver), as `--profile forwarding --profile
# metrics`, and is reported as forwarding+metrics: the forwarding demo's
# checks plus the receiver's /healthz and what Prometheus's HTTP API says
# it scraped, both read on the ports the compose file publishes on the
# host (127.0.0.1:9464 and :9090, which must be free). Its image is got
# (or built, tests/containers/prometheus.Dockerfile) only when it runs.
# A profile without a check of its own here (one added to the compose
# file later) still runs: up, every service running or done with exit 0
# for 20 s, then down, and the report says "smoke".
# Writes a report (profile, outcome, seconds, exit codes) to stdout and
# to build/compose-check/report.txt, each demo's checked output beside it.
# Exit 0 when every profile run passed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# shellcheck source=tests/container-engine.sh
. tests/container-engine.sh
# shellcheck source=tests/demo-checks.sh
. tests/demo-checks.sh

tmp=$(mktemp -d /tmp/edp-compose-check.XXXXXX)
project=edpcheck$$
files=(-f "$repo/docker-compose.yml")
out=
EDP_RABBITMQ_USER=edp
EDP_RABBITMQ_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export EDP_RABBITMQ_USER EDP_RABBITMQ_PASS

# The profiles running (space-separated).
active_profile=
# docker-compose, on this run's project, files and the profiles running.
compose() {
  local p sel=()
  for p in $active_profile; do sel+=(--profile "$p"); done
  "${COMPOSE[@]}" -p "$project" "${files[@]}" "${sel[@]}" "$@"
}
# Profiles that need another one to run: metrics' Prometheus scrapes the
# forwarding profile's receiver (docker/prometheus.yml).
declare -A runs_with=([metrics]=forwarding)
cleanup() {
  if [ -n "$ENGINE" ]; then compose down -v --remove-orphans -t 2 >/dev/null 2>&1 || true; fi
  engine_down
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "FAIL: $*" >&2
  if [ -n "$out" ] && [ -f "$out" ]; then sed 's/^/    | /' "$out" >&2; fi
  exit 1
}

# A service's container, found by the labels compose puts on it (the
# engine's own CLI: docker-compose takes a second to start, too slow to
# poll with).
cid() {
  engine_cli ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" | head -1
}
state() { engine_cli inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid "$1")"; }
# A service's output, stdout and stderr, carriage returns (tty) dropped.
logs() { engine_cli logs "$(cid "$1")" 2>&1 | tr -d '\r'; }
# One timeline of several services' lines, in the order they were written
# (the engine's timestamps), as a terminal running them together shows.
timeline() {
  local svc
  for svc in "$@"; do engine_cli logs -t "$(cid "$svc")" 2>&1; done |
    tr -d '\r' | sort -s -k1,1 | cut -d' ' -f2-
}

# wait_log SECONDS SERVICE REGEX [COUNT]: until COUNT lines (1) match.
wait_log() {
  local s=$1 svc=$2 re=$3 n=${4:-1} i
  for ((i = 0; i < s; i++)); do
    [ "$(logs "$svc" | grep -cE -- "$re")" -ge "$n" ] && return 0
    sleep 1
  done
  out=$tmp/wait.log; logs "$svc" > "$out"
  fail "$svc: fewer than $n lines matching /$re/ after $s s"
}

# wait_exit SECONDS SERVICE: until the service's container exited; prints
# its exit code.
wait_exit() {
  local s=$1 svc=$2 i st
  for ((i = 0; i < s; i++)); do
    st=$(state "$svc")
    if [[ $st == exited* ]]; then echo "${st#exited }"; return 0; fi
    sleep 1
  done
  out=$tmp/wait.log; logs "$svc" > "$out"
  fail "$svc did not exit within $s s"
}

# Stops services with SIGTERM (as `docker compose stop`, or Ctrl-C on
# `up`) and records their exit codes: 130 is the documented one for the
# edp programs (stop_expect CODE SERVICE... for others).
stop_expect() {
  local want=$1 svc code
  shift
  compose stop -t 20 "$@" >/dev/null 2>&1
  for svc in "$@"; do
    code=$(state "$svc"); code=${code#exited }
    codes+=("$svc=$code")
    [ "$code" = "$want" ] || { out=$tmp/wait.log; logs "$svc" > "$out"; fail "$svc stopped with exit $code, not $want"; }
  done
}
stop_services() { stop_expect 130 "$@"; }

# Types a line on a service's terminal, as a user attached to it does.
# attach wants a terminal: a pty from python3. The attach is then ended
# by a signal, never by closing its input, which would reach the
# service as end of file (Ctrl-D) and close its stdin for good; Ctrl-U
# first drops anything half-typed before.
type_line() {
  python3 - "$2" "$ENGINE" attach --sig-proxy=false "$(cid "$1")" <<'PY' >/dev/null 2>&1 || true
import os, pty, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
time.sleep(1.5)
os.write(fd, b"\x15" + sys.argv[1].encode() + b"\r")
time.sleep(1.5)
os.kill(pid, signal.SIGTERM)
for _ in range(50):
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.1)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
PY
}

exit_ok() { # SERVICE CODE: a program that ends by itself must exit 0
  codes+=("$1=$2")
  [ "$2" = 0 ] || { out=$tmp/wait.log; logs "$1" > "$out"; fail "$1 exited $2"; }
}

# No program may have been refused by a broker that was still starting
# (the race this stack had): with the health check they start after it
# listens; EDP_CONNECT_RETRY_MS covers what is left. Counts the waits.
no_race() {
  local svc
  for svc in "$@"; do
    if logs "$svc" | grep -q 'broker unreachable'; then
      out=$tmp/wait.log; logs "$svc" > "$out"; fail "$svc: broker unreachable"
    fi
    retries=$((retries + $(logs "$svc" | grep -c 'broker not ready' || true)))
  done
}

run_forwarding() {
  exit_ok forward-sender "$(wait_exit 120 forward-sender)"
  wait_log 60 forward-receiver '^Database commit\.' 5
  stop_services forward-receiver
  no_race forward-sender forward-receiver
  out=$tmp/forwarding.out
  { logs forward-sender; logs forward-receiver; } > "$out"
  check_forwarding "$out"
}

run_thread-delegate() {
  exit_ok trade-sender "$(wait_exit 120 trade-sender)"
  wait_log 60 trade-dispatcher '^Thread [0-9]: Placed \(' 10
  stop_services trade-dispatcher
  no_race trade-sender trade-dispatcher
  out=$tmp/thread-delegate.out
  { logs trade-sender; logs trade-dispatcher; } > "$out"
  check_thread_delegate "$out"
}

run_ambulance() {
  exit_ok ambulance-sender "$(wait_exit 120 ambulance-sender)"
  wait_log 60 ambulance-receiver '^Processing message:' 8
  stop_services ambulance-receiver
  no_race ambulance-sender ambulance-receiver
  out=$tmp/ambulance.out
  timeline ambulance-sender ambulance-receiver > "$out"
  check_ambulance ambulance "$out"
}

# The watch demo of cmd/demo.sh, by hand: set a value on the config
# server's terminal, kill svc1, set another.
run_watch() {
  wait_log 60 config-server 'Registered service svc1'
  wait_log 60 config-server 'Registered service svc2'
  type_line config-server "set log_level DEBUG"
  wait_log 30 watch-service-1 'log_level = DEBUG'
  wait_log 30 watch-service-2 'log_level = DEBUG'
  compose kill -s KILL watch-service-1 >/dev/null 2>&1
  codes+=("watch-service-1=$(state watch-service-1 | cut -d' ' -f2) (SIGKILL)")
  # The broker deletes svc1's exclusive queue when it sees the
  # connection drop; demo.sh gives it the same second.
  sleep 1
  type_line config-server "set log_level WARN"
  wait_log 30 config-server 'Removing service from registry'
  wait_log 30 watch-service-2 'log_level = WARN'
  stop_services watch-service-2 config-server
  no_race config-server watch-service-1 watch-service-2
  out=$tmp/watch.out
  {
    echo "--- config server output:"; logs config-server | sed 's/^/    /'
    echo "--- svc1 output:"; logs watch-service-1 | sed 's/^/    /'
    echo "--- svc2 output:"; logs watch-service-2 | sed 's/^/    /'
  } > "$out"
  check_watch "$out"
}

run_supervisor() {
  exit_ok load "$(wait_exit 120 load)"
  wait_log 90 supervisor '^Removing consumer\.\.\.'
  # back to one consumer once the burst is over and the keep-alive passed
  local i
  for ((i = 0; i < 90; i++)); do
    logs supervisor | grep '^consumers: ' | tail -1 | grep -q '^consumers: 1,' && break
    sleep 1
  done
  stop_services supervisor
  no_race supervisor load
  out=$tmp/supervisor.out
  logs supervisor > "$out"
  check_supervisor "$out"
}

# The multi-broker demo's failover too: broker 2 (rabbitmq-2) is killed
# while the sender spreads its messages, and started again once the
# sender has gone on without it (a rate line with broker 1 down): under
# podman, starting a container re-applies netavark's firewall rules, and
# the other brokers' connections were seen to drop or stall for seconds
# then, which is the network's doing, not the failover's.
run_multi-broker() {
  wait_log 120 multi-sender 'broker 0: [0-9]+ msg/sec'
  compose kill -s KILL rabbitmq-2 >/dev/null 2>&1
  wait_log 30 multi-sender 'broker 1: down .*broker 2: [1-9][0-9]* msg/sec'
  compose start rabbitmq-2 >/dev/null 2>&1
  exit_ok multi-sender "$(wait_exit 240 multi-sender)"
  stop_services multi-receiver
  no_race multi-sender multi-receiver
  out=$tmp/multi-broker.out
  { logs multi-sender; logs multi-receiver; } > "$out"
  check_multi_broker "$out" 60000
  # The sender saw broker 1 (rabbitmq-2) go down and went on without it.
  grep -Eq '^edp-multi-sender: warning: broker 1 \(.*rabbitmq-2.*\) down' "$out" ||
    fail "the sender did not notice rabbitmq-2 go"
  grep -Eq 'broker 1: down .*broker 2: [1-9][0-9]* msg/sec' "$out" ||
    fail "no messages spread over the other brokers while rabbitmq-2 was down"
}

# http_get URL: prints the HTTP status, a space and the body's first line
# ("000 <error>" when nothing answered), within 5 s.
http_get() {
  python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except Exception as e:
    status, body = 0, str(e).encode()
print(f"{status:03d}", (body.decode(errors="replace").splitlines() or [""])[0])
PY
}

# prom_value QUERY: asks Prometheus's HTTP API (the port the compose file
# publishes on the host) for an instant vector; prints the single
# series' value and labels as JSON ("<n> series" or the error otherwise).
prom_value() {
  python3 - "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[1]})
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        answer = json.load(r)
except Exception as e:
    print(f"no answer: {e}")
    sys.exit(0)
result = answer.get("data", {}).get("result", [])
if answer.get("status") != "success" or len(result) != 1:
    print(f"{len(result)} series: {json.dumps(answer)[:300]}")
else:
    print(result[0]["value"][1], json.dumps(result[0]["metric"], sort_keys=True))
PY
}

# prom_wait SECONDS QUERY VALUE: until Prometheus answers QUERY with one
# series of that value (it scrapes every 5 s); prints the answer.
prom_wait() {
  local s=$1 q=$2 want=$3 i got
  for ((i = 0; i < s; i++)); do
    got=$(prom_value "$q")
    [ "${got%% *}" = "$want" ] && { echo "$got"; return 0; }
    sleep 1
  done
  out=$tmp/wait.log; logs prometheus > "$out"
  fail "Prometheus: $q is '$got' after $s s, not $want"
}

# The metrics profile, with forwarding: the forwarding demo as above and,
# while the receiver still consumes, its /healthz from the host, then
# what Prometheus scraped, through its HTTP API: the receiver's target
# up, and its processed and failed counters equal to the orders the
# receiver committed and the attempts it reported failed.
run_metrics() {
  exit_ok forward-sender "$(wait_exit 120 forward-sender)"
  wait_log 60 forward-receiver '^Database commit\.' 5
  local commits errors health up processed failed direct job='job="edp-forward-receiver"'
  commits=$(logs forward-receiver | grep -c '^Database commit\.')
  errors=$(logs forward-receiver | grep -c '^Error processing message\.' || true)
  [ "$commits" = 5 ] || fail "forward-receiver committed $commits orders, not the demo's 5"
  health=$(http_get http://127.0.0.1:9464/healthz)
  [ "$health" = "200 ok" ] || fail "forward-receiver's /healthz answered '$health' while consuming, not '200 ok'"
  # The receiver's own count, as the host reads it from its endpoint.
  direct=$(python3 -c 'import urllib.request
for line in urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode().splitlines():
    if line.startswith("edp_messages_processed_total{"): print(line)' 2>&1 || true)
  [ "${direct##* }" = "$commits" ] || fail "forward-receiver's /metrics says '$direct', not $commits processed"
  up=$(prom_wait 60 "up{$job}" 1)
  [[ $up == *'"instance": "forward-receiver:9464"'* ]] || fail "Prometheus's target is not forward-receiver:9464: $up"
  processed=$(prom_wait 60 "edp_messages_processed_total{$job}" "$commits")
  failed=$(prom_wait 30 "edp_messages_failed_total{$job}" "$errors")
  # Still so after one more scrape: the counts are final, not passing by.
  sleep 6
  processed=$(prom_wait 1 "edp_messages_processed_total{$job}" "$commits")
  stop_services forward-receiver
  stop_expect 0 prometheus
  no_race forward-sender forward-receiver
  out=$tmp/metrics.out
  { logs forward-sender; logs forward-receiver; } > "$out"
  check_forwarding "$out"
  {
    echo "--- checked while forward-receiver consumed ($commits commits, $errors failed attempts in its log):"
    echo "GET 127.0.0.1:9464/healthz: $health"
    echo "GET 127.0.0.1:9464/metrics: $direct"
    echo "Prometheus up{$job}: $up"
    echo "Prometheus edp_messages_processed_total{$job}: $processed"
    echo "Prometheus edp_messages_failed_total{$job}: $failed"
  } >> "$out"
}

# A profile with no check here: its services run (or end with 0) for 20 s.
run_smoke() {
  local svc st i
  for ((i = 0; i < 20; i++)); do
    for svc in $(compose ps --services 2>/dev/null); do
      st=$(state "$svc")
      case $st in running*|"exited 0") ;; *) out=$tmp/wait.log; logs "$svc" > "$out"; fail "$svc: $st" ;; esac
    done
    sleep 1
  done
}

# The profiles the compose file declares, in its order.
profiles_of() {
  python3 -c 'import sys, yaml
seen = []
for svc in yaml.safe_load(open(sys.argv[1]))["services"].values():
    for p in svc.get("profiles", []):
        if p not in seen: seen.append(p)
print(" ".join(seen))' "$repo/docker-compose.yml"
}

# Runs one profile in a subshell (a failure ends that profile only) and
# records its line of the report.
report=()
run_profile() {
  local p=$1 label=${2:-$1} t0 rc kind=demo
  declare -F "run_$p" >/dev/null || kind=smoke
  echo "== profile $label"
  t0=$(date +%s)
  active_profile="${runs_with[$p]:-} $p"
  set +e
  (
    set -e
    codes=() retries=0
    if ! compose up -d --no-build >"$tmp/up.log" 2>&1; then
      out=$tmp/up.log; fail "up failed"
    fi
    echo "   up in $(($(date +%s) - t0)) s"
    if [ $kind = demo ]; then "run_$p"; else run_smoke; fi
    echo "${codes[*]:-}; ${retries} connect retries" > "$tmp/codes"
    if [ -n "$out" ]; then cp "$out" "build/compose-check/$label.out"; fi
  )
  rc=$?
  set -e
  local t_down; t_down=$(date +%s)
  # The volumes go too: no need to wait for the brokers' graceful stop.
  compose down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
  echo "   down in $(($(date +%s) - t_down)) s"
  active_profile=
  local took=$(($(date +%s) - t0)) what
  if [ $rc = 0 ]; then what="ok ($kind)"; failed_any=${failed_any:-0}; else what="FAILED"; failed_any=1; fi
  report+=("$(printf '%-22s %-13s %4d s  %s' "$label" "$what" "$took" "$(cat "$tmp/codes" 2>/dev/null)")")
  rm -f "$tmp/codes"
  echo "   $label: $what in $took s"
}

t_start=$(date +%s)
rm -rf build/compose-check; mkdir -p build/compose-check
engine_up || { echo "compose-check: no container engine runs here" >&2; exit 69; }
# The profiles are read with python3-yaml, the TLS run's certificates made
# with openssl.
engine_apt python3-yaml openssl || exit 69
engine_healthchecks_start
all=$(profiles_of)
wanted=${EDP_COMPOSE_PROFILES:-$all}
images=("${ENGINE_IMAGES[@]}")
if [[ " $wanted " == *" metrics "* && " ${EDP_COMPOSE_SKIP:-} " != *" metrics "* ]]; then
  images+=("$ENGINE_PROM_IMAGE")
fi
engine_images "${images[@]}" || fail "cannot get the images ${images[*]}"
t_images=$(date +%s)
echo "== building the edp image"
active_profile=forwarding compose build forward-sender >"$tmp/build.log" 2>&1 ||
  { out=$tmp/build.log; fail "the edp image does not build"; }
t_build=$(date +%s)

failed_any=0
for p in $wanted; do
  [[ " $all " == *" $p "* ]] || { echo "compose-check: no profile '$p' in docker-compose.yml ($all)" >&2; exit 64; }
  if [[ " ${EDP_COMPOSE_SKIP:-} " == *" $p "* ]]; then
    report+=("$(printf '%-22s %-13s' "$p" "skipped (EDP_COMPOSE_SKIP)")"); continue
  fi
  label=$p
  [ -z "${runs_with[$p]:-}" ] || label="${runs_with[$p]}+$p"
  run_profile "$p" "$label"
done

# The TLS override: a TLS-only broker, the forwarding demo logged in by
# its client certificate. Run from a copy of the compose files, whose
# docker/tls gets this run's certificates (the repository's stays as it
# is).
if [ "${EDP_COMPOSE_TLS:-1}" = 1 ] && [[ " $wanted " == *" forwarding "* ]]; then
  mkdir -p "$tmp/stack"
  cp -r docker-compose.yml docker-compose.tls.yml docker "$tmp/stack/"
  rm -rf "$tmp/stack/docker/tls"
  tests/broker.sh certs "$tmp/stack/docker/tls" rabbitmq "$EDP_RABBITMQ_USER"
  chmod 644 "$tmp/stack"/docker/tls/*.key
  files=(-f "$tmp/stack/docker-compose.yml" -f "$tmp/stack/docker-compose.tls.yml")
  run_profile forwarding forwarding+tls
  files=(-f "$repo/docker-compose.yml")
fi

t_end=$(date +%s)
mkdir -p build
{
  echo "compose-check: $ENGINE, $(date -u +%FT%TZ)"
  echo "images ready in $((t_images - t_start)) s, edp image built in $((t_build - t_images)) s, profiles in $((t_end - t_build)) s, total $((t_end - t_start)) s"
  printf '%s\n' "${report[@]}"
} | tee build/compose-check/report.txt
[ "$failed_any" = 0 ]
