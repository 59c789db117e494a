#!/usr/bin/env bash
# The toolkit as users get it: the library exports only edp_ names, the
# public headers compile as C++, `make install` gives a tree that an
# outside service builds against with pkg-config alone (shared and static)
# and runs against the broker, and every program answers --help and
# --version. Needs EDP_URL (run-integration.sh) and EDP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EDP_BIN:-bin}
OUT=$(dirname "$BIN"); [ "$BIN" = bin ] && OUT=build
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d /tmp/edp-toolkit.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "-- exported symbols"
bad=$(nm -D --defined-only "$OUT/libedp.so" | awk '{print $3}' | grep -v '^edp_' || true)
[ -z "$bad" ] || fail "libedp.so exports non-edp_ symbols: $bad"
n=$(nm -D --defined-only "$OUT/libedp.so" | grep -c ' edp_')
[ "$n" -gt 20 ] || fail "only $n edp_ symbols exported"
echo "ok: $n symbols, all edp_"

echo "-- headers as C++"
printf '#include "edp.h"\nint main() { edp_conn *c = nullptr; edp_conn_destroy(&c); return 0; }\n' > "$tmp/t.cc"
# shellcheck disable=SC2086 # EDP_SANFLAGS: make check SAN=1's flags
g++ -std=c++11 -Wall -Wextra -Werror ${EDP_SANFLAGS:-} -Ilib -Ipatterns -o "$tmp/cxx" "$tmp/t.cc" "$OUT/libedp.a" \
  $(pkg-config --libs librabbitmq jansson openssl) -lpthread || fail "headers do not compile as C++"
"$tmp/cxx" || fail "C++ program failed"
echo "ok"

echo "-- install and build the example with pkg-config alone"
# A plain build: under "make check SAN=1" MAKEFLAGS would pass SAN=1 on,
# and an outside service links the normal library.
MAKEFLAGS= make -s install SAN=0 DESTDIR="$tmp/root" PREFIX=/usr >/dev/null
export PKG_CONFIG_SYSROOT_DIR="$tmp/root" PKG_CONFIG_PATH="$tmp/root/usr/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -o "$tmp/ex-shared" examples/forward_receiver.c $(pkg-config --cflags --libs edp)
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -o "$tmp/ex-static" examples/forward_receiver.c $(pkg-config --cflags edp) \
  "$tmp/root/usr/lib/libedp.a" $(pkg-config --libs librabbitmq jansson openssl) -lpthread
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_PATH
! ldd "$tmp/ex-static" | grep -q libedp || fail "static example links libedp.so"
for kind in shared static; do
  q="toolkit.example.$kind.$$"
  "$BIN/edp-forward-sender" --queue "$q" "one" "two" "three" >/dev/null 2>&1
  out=$(LD_LIBRARY_PATH="$tmp/root/usr/lib" timeout 60 "$tmp/ex-$kind" "$q")
  [ "$(grep -c '^got ' <<<"$out")" = 3 ] || fail "$kind example: $out"
  echo "ok: $kind example received 3 messages"
done

echo "-- --help and --version of every program"
for p in "$BIN"/edp-*; do
  "$p" --help >"$tmp/help" || fail "$p --help exit $?"
  grep -q -- '--url' "$tmp/help" || fail "$p --help does not list --url"
  v=$("$p" --version) || fail "$p --version exit $?"
  [[ $v == *0.1.0* ]] || fail "$p --version: $v"
  set +e; "$p" --no-such-option >/dev/null 2>&1; rc=$?; set -e
  [ $rc = 64 ] || fail "$p with a bad option exits $rc, not 64"
done
echo "ok: $(ls "$BIN"/edp-* | wc -l) programs"
tests/gen-program-docs.sh "$BIN" > "$tmp/programs.md"
diff -u docs/programs.md "$tmp/programs.md" >&2 || fail "docs/programs.md is out of date: run make docs"
echo "ok: docs/programs.md matches every --help"
echo "-- broker URLs from a secret file, passwords kept out of argv"
for p in "$BIN"/edp-*; do
  "$p" --help | grep -q -- '--url-file' || fail "$p --help does not list --url-file"
done
printf '# the broker\n\n  %s  \n' "$EDP_URL" > "$tmp/url"
q="toolkit.urlfile.$$"
n=$("$BIN/edp-forward-sender" --url-file "$tmp/url" --queue "$q" --json a b |
  grep -c '"event":"confirmed"') || true
[ "$n" = 2 ] || fail "--url-file: $n of 2 confirmed"
n=$(env -u EDP_URL EDP_URL_FILE="$tmp/url" "$BIN/edp-forward-receiver" --queue "$q" --count 2 --json |
  grep -c '"event":"processed"') || true
[ "$n" = 2 ] || fail "EDP_URL_FILE: $n of 2 processed"
printf '%s\n%s\n' "$EDP_URL" "$EDP_URL" > "$tmp/url2"
"$BIN/edp-multi-sender" --url-file "$tmp/url2" --queue "$q.multi" --count 10 2>"$tmp/err" >/dev/null ||
  fail "multi-sender with a two-line --url-file: $(cat "$tmp/err")"
grep -q '10 confirmed over 2 brokers' "$tmp/err" || fail "multi-sender: $(cat "$tmp/err")"
expect_usage() { # what, then the command: must exit 64 and say why on stderr
  local what=$1; shift
  set +e; "$@" >/dev/null 2>"$tmp/err"; local rc=$?; set -e
  [ $rc = 64 ] || fail "$what: exit $rc, not 64"
  grep -q "$what" "$tmp/err" || fail "$what: stderr says $(cat "$tmp/err")"
}
s="$BIN/edp-forward-sender"
expect_usage "both set" env EDP_URL_FILE="$tmp/url" "$s" x
expect_usage "No such file" "$s" --url-file "$tmp/none" x
expect_usage "larger than" "$s" --url-file /dev/zero x
expect_usage "no URL in it" "$s" --url-file /dev/null x
expect_usage "connects to one" "$s" --url-file "$tmp/url2" x
expect_usage "exclude each other" "$s" --url "$EDP_URL" --url-file "$tmp/url" x
expect_usage "exclude each other" "$s" --url-file "$tmp/url" --url "$EDP_URL" x
expect_usage "given twice" "$s" --url-file "$tmp/url" --url-file "$tmp/url" x
printf '%s\0\n' "$EDP_URL" > "$tmp/url-nul"
expect_usage "NUL byte" "$s" --url-file "$tmp/url-nul" x
# A listener that never answers keeps the sender in its connect, so its
# argv can be read the way another user would (ps, /proc/PID/cmdline).
port_file="$tmp/port"
python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen()
open(sys.argv[1],"w").write(str(s.getsockname()[1])); time.sleep(20)' "$port_file" &
listener=$!
for _ in $(seq 1 50); do [ -s "$port_file" ] && break; sleep 0.1; done
secret='s3cr%2Ft%40%3Fx'
"$s" --url "amqp://bob:$secret@127.0.0.1:$(cat "$port_file")/?connection_timeout=3000" x \
  >/dev/null 2>"$tmp/err" &
sender=$!
for _ in $(seq 1 50); do grep -q warning "$tmp/err" && break; sleep 0.1; done
argv=$(tr '\0' ' ' < "/proc/$sender/cmdline")
set +e; wait "$sender"; rc=$?; set -e
kill "$listener" 2>/dev/null || true
grep -q 'password in --url is visible' "$tmp/err" || fail "no warning for a password in --url"
[[ $argv != *"$secret"* && $argv == *bob:xxxxxxxxxxxxxxx@* ]] || fail "password left in argv: $argv"
! grep -q -e 's3cr' -e '%2Ft' "$tmp/err" || fail "password in a message: $(cat "$tmp/err")"
[ $rc = 69 ] || fail "a broker that never answers: exit $rc, not 69"
echo "ok: --url-file, EDP_URL_FILE, 9 refused ambiguities, argv scrubbed, exit 69 on timeout"
echo "-- --connect-retry-ms: a broker that starts listening late"
# RabbitMQ opens its AMQP listener seconds after its node is up, and a
# compose stack starts the programs with the broker. A port that starts
# listening 3 s after the programs, then forwards to the real broker,
# stands for that: with the option they connect, without it they exit
# 69 at once, and the bound is kept.
free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
late=$(free_tcp_port) dead=$(free_tcp_port)
broker_port=$(sed -E 's|^[a-z]+://[^@]*@[^:/?]*:([0-9]+).*|\1|' <<<"$EDP_URL")
late_url=$(sed -E "s|^([a-z]+://[^@]*@[^:/?]*):[0-9]+|\1:$late|" <<<"$EDP_URL")
dead_url=$(sed -E "s|^([a-z]+://[^@]*@[^:/?]*):[0-9]+|\1:$dead|" <<<"$EDP_URL")
[[ $late_url == *":$late"* && $broker_port =~ ^[0-9]+$ ]] || fail "cannot rewrite the port of $EDP_URL"
q="toolkit.retry.$$"
t0=$(date +%s%N); set +e; "$s" --url "$late_url" --queue "$q" x 2>"$tmp/err"; rc=$?; set -e
[ $rc = 69 ] && [ "$(ms_since "$t0")" -lt 2000 ] ||
  fail "without --connect-retry-ms: exit $rc after $(ms_since "$t0") ms, not 69 at once"
timeout 60 python3 -c 'import socket, sys, threading, time
late, target = int(sys.argv[1]), int(sys.argv[2])
time.sleep(3)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", late)); s.listen(16)
def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data: break
            b.sendall(data)
    except OSError: pass
    for x in (a, b):
        try: x.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    c, _ = s.accept()
    u = socket.create_connection(("127.0.0.1", target))
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()' "$late" "$broker_port" &
forwarder=$!
trap 'kill $forwarder 2>/dev/null || true; rm -rf "$tmp"' EXIT
t0=$(date +%s%N)
# The supervisor waits through cli_await_brokers (its pattern opens the
# connections), the sender through cli_connect: both paths are covered.
EDP_CONNECT_RETRY_MS=30000 "$BIN/edp-supervisor" --url "$late_url" --queue "$q" --count 2 \
  --idle-timeout 30000 >"$tmp/sup.out" 2>"$tmp/sup.err" &
sup=$!
n=$("$s" --url "$late_url" --connect-retry-ms 30000 --queue "$q" --json a b 2>"$tmp/err" |
  grep -c '"event":"confirmed"') || true
waited=$(ms_since "$t0")
[ "$n" = 2 ] || fail "--connect-retry-ms: $n of 2 confirmed: $(cat "$tmp/err")"
[ "$waited" -ge 2500 ] || fail "--connect-retry-ms: connected after $waited ms, before the port listened"
grep -q 'broker not ready' "$tmp/err" || fail "--connect-retry-ms: no retry logged: $(cat "$tmp/err")"
set +e; wait "$sup"; rc=$?; set -e
[ $rc = 0 ] || fail "EDP_CONNECT_RETRY_MS: edp-supervisor exit $rc: $(cat "$tmp/sup.err")"
grep -q 'broker not ready' "$tmp/sup.err" || fail "edp-supervisor did not wait: $(cat "$tmp/sup.err")"
kill "$forwarder" 2>/dev/null || true
t0=$(date +%s%N); set +e; EDP_CONNECT_RETRY_MS=1500 "$s" --url "$dead_url" x 2>"$tmp/err"; rc=$?; set -e
took=$(ms_since "$t0")
[ $rc = 69 ] && [ "$took" -ge 1400 ] && [ "$took" -lt 4000 ] ||
  fail "EDP_CONNECT_RETRY_MS=1500 and no broker: exit $rc after $took ms, not 69 after 1.5 s"
t0=$(date +%s%N); set +e; EDP_CONNECT_RETRY_MS=60000 "$s" --connect-retry-ms 0 --url "$dead_url" x 2>/dev/null; rc=$?; set -e
[ $rc = 69 ] && [ "$(ms_since "$t0")" -lt 2000 ] || fail "--connect-retry-ms 0 does not win over the environment"
t0=$(date +%s%N); set +e
"$s" --connect-retry-ms 30000 --url "${EDP_URL/guest:guest@/guest:wrong@}" x 2>"$tmp/err"; rc=$?; set -e
[ $rc = 77 ] && [ "$(ms_since "$t0")" -lt 5000 ] ||
  fail "a refused login is retried: exit $rc after $(ms_since "$t0") ms: $(cat "$tmp/err")"
expect_usage "EDP_CONNECT_RETRY_MS: expected an integer" env EDP_CONNECT_RETRY_MS=soon "$s" x
expect_usage "connect-retry-ms: expected an integer" "$s" --connect-retry-ms -1 x
echo "ok: connected after $waited ms (port open after 3 s), 69 at once without the option, 69 after $took ms with a 1500 ms bound, 77 at once for a wrong password"
echo "-- docker-compose.yml"
if command -v docker-compose >/dev/null; then
  if docker-compose -f docker-compose.yml config -q 2>/dev/null; then
    fail "compose file accepted without EDP_RABBITMQ_PASS (a default password?)"
  fi
  EDP_RABBITMQ_PASS=test docker-compose -f docker-compose.yml --profile forwarding \
    --profile thread-delegate --profile ambulance --profile watch --profile supervisor \
    --profile multi-broker --profile metrics config > "$tmp/compose.yml" ||
    fail "compose file does not validate"
  # Every program the stack runs exists in bin/ and knows every flag it
  # is given.
  python3 - "$tmp/compose.yml" "$BIN" <<'PY' || fail "compose runs a program or flag that does not exist"
import os, re, shlex, subprocess, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
bindir = sys.argv[2]
checked = 0
for name, svc in doc["services"].items():
    for key in ("command", "entrypoint"):
        cmd = svc.get(key)
        if not cmd:
            continue
        words = cmd if isinstance(cmd, list) else shlex.split(cmd)
        if words[:2] == ["sh", "-c"]:
            words = shlex.split(words[2])
        # A shell line runs the program after some setup: check from it.
        words = [w for w in words if w != "exec"]
        starts = [i for i, w in enumerate(words) if w.startswith("edp-")]
        if not starts:
            continue
        words = words[starts[0]:]
        prog = words[0]
        path = os.path.join(bindir, prog)
        if not os.access(path, os.X_OK):
            sys.exit(f"{name}: {prog} is not in {bindir}")
        helptext = subprocess.run([path, "--help"], capture_output=True, text=True).stdout
        for w in words[1:]:
            if w.startswith("--"):
                flag = w.split("=")[0]
                if not re.search(re.escape(flag) + r"\b", helptext):
                    sys.exit(f"{name}: {prog} has no option {flag}")
        checked += 1
print(f"ok: {checked} services checked")
PY
  # The metrics profile: Prometheus's config is valid and scrapes the
  # port the forward-receiver serves --metrics on.
  promtool check config docker/prometheus.yml >/dev/null ||
    fail "docker/prometheus.yml: promtool check config refuses it"
  python3 - "$tmp/compose.yml" <<'PY' || fail "the metrics profile does not scrape the receiver's --metrics port"
import sys, yaml
svc = yaml.safe_load(open(sys.argv[1]))["services"]
cmd = svc["forward-receiver"]["command"]
port = cmd[cmd.index("--metrics") + 1].rsplit(":", 1)[1]
prom = yaml.safe_load(open("docker/prometheus.yml"))
targets = [t for j in prom["scrape_configs"] for s in j["static_configs"] for t in s["targets"]]
assert f"forward-receiver:{port}" in targets, (port, targets)
assert "prometheus" in svc and "metrics" in svc["prometheus"]["profiles"]
print(f"ok: Prometheus scrapes forward-receiver:{port}")
PY
  # The TLS override: amqps only, the forwarding demo by its client
  # certificate; its URL must parse (the program then fails on the CA
  # file, which exists only in the container: 77, not a usage error).
  url=$(EDP_RABBITMQ_PASS=test docker-compose -f docker-compose.yml -f docker-compose.tls.yml \
    --profile forwarding config | python3 -c 'import sys, yaml
d = yaml.safe_load(sys.stdin)["services"]
r, s = d["forward-receiver"]["environment"]["EDP_URL"], d["forward-sender"]["environment"]["EDP_URL"]
assert r == s and "5671:5671" in str(d["rabbitmq"]["ports"]), (r, s)
print(r)') || fail "docker-compose.tls.yml does not validate"
  [[ $url == amqps://*auth_mechanism=external* ]] || fail "TLS override URL: $url"
  set +e; "$BIN/edp-forward-sender" --url "$url" x 2>"$tmp/err"; rc=$?; set -e
  if [ $rc != 77 ] || ! grep -q 'cannot read cacertfile /etc/edp/tls/ca.pem' "$tmp/err"; then
    fail "TLS override URL: exit $rc: $(cat "$tmp/err")"
  fi
  echo "ok: TLS override validates, its URL parses"
else
  fail "docker-compose is not installed (make deps installs it)"
fi
echo "-- CI runs the README's test command"
readme_test=$(tests/quickstart-commands.sh | grep check | head -1)
[ -n "$readme_test" ] || fail "no test command in the README's quick start"
grep -qxF "$readme_test" .ci/run || fail ".ci/run does not run the README's test command '$readme_test'"
echo "ok: .ci/run runs '$readme_test'"
echo "toolkit: all passed"
