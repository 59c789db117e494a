#!/usr/bin/env bash
# make fresh-check: the README's quick start, taken from the README itself
# (tests/quickstart-commands.sh), run as a newcomer runs it: in a bare
# Debian 12 container (minbase bookworm, the base image of make
# compose-check, on the same engine: tests/container-engine.sh) with only
# git added, on this checkout's files (tracked and new ones, as the next
# commit has them). First the README's first command as a user that is
# not root, which must stop at once with exit 77 and say what needs
# root; then every command as root, in order, each with its exit code and
# time. Fails when any command fails, so the README can't drift.
# Report: stdout and build/fresh-check/report.txt; the commands' output
# in build/fresh-check/output.txt.
# EDP_FRESH_COMMANDS=N runs only the first N commands, and the report
# names the ones left out. .ci/run uses 1: its own machine has just run
# the test command (./quickstart.sh check) from a fresh Debian 12, so the
# container adds what only a bare system shows (no make, no compiler),
# which the first command meets as well; a second whole make check would
# double CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/container-engine.sh
. tests/container-engine.sh

tmp=$(mktemp -d /tmp/edp-fresh-check.XXXXXX)
name=edp-fresh-check-$$
cleanup() {
  if [ -n "$ENGINE" ]; then engine_cli rm -f "$name" >/dev/null 2>&1 || true; fi
  engine_down
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The quick start's commands, comments dropped.
tests/quickstart-commands.sh > "$tmp/commands" || true
[ -s "$tmp/commands" ] || { echo "fresh-check: no \`\`\`sh block under '## Quick start' in README.md" >&2; exit 65; }
if [ -n "${EDP_FRESH_COMMANDS:-}" ]; then
  head -n "$EDP_FRESH_COMMANDS" "$tmp/commands" > "$tmp/run"
  tail -n +"$((EDP_FRESH_COMMANDS + 1))" "$tmp/commands" > "$tmp/left"
  mv "$tmp/run" "$tmp/commands"
fi

git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf "$tmp/src.tar"
rm -rf build/fresh-check; mkdir -p build/fresh-check

t_start=$(date +%s)
engine_up || { echo "fresh-check: no container engine runs here" >&2; exit 69; }
engine_images docker.io/library/debian:12
# Bare Debian 12 plus git, as the newcomer has it after cloning.
cat > "$tmp/Containerfile" <<'EOF'
FROM docker.io/library/debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
EOF
engine_cli build -q -t localhost/edp-fresh:bookworm-git -f "$tmp/Containerfile" "$tmp" \
  >build/fresh-check/image.txt 2>&1 || { cat build/fresh-check/image.txt >&2; exit 1; }
t_image=$(date +%s)

# Inside: the checkout in /root/edp (root's) and /home/newcomer/edp.
cat > "$tmp/inside.sh" <<'EOF'
set -u
mkdir -p /root/edp && tar -C /root/edp -xf /fresh/src.tar
useradd -m newcomer
mkdir -p /home/newcomer/edp && tar -C /home/newcomer/edp -xf /fresh/src.tar
chown -R newcomer: /home/newcomer/edp
first=$(head -1 /fresh/commands)
t0=$(date +%s)
(cd /home/newcomer/edp && runuser -u newcomer -- bash -c "$first") </dev/null >/fresh-out/user.txt 2>&1
echo "user $? $(($(date +%s) - t0))" >> /fresh-out/results
cd /root/edp
while IFS= read -r cmd; do
  echo "===== $cmd"
  t0=$(date +%s)
  bash -c "$cmd" </dev/null
  echo "root $? $(($(date +%s) - t0)) $cmd" >> /fresh-out/results
done < /fresh/commands
EOF
mkdir -p "$tmp/out"
echo "== the README's quick start in a bare Debian 12 container: $(tr '\n' ';' < "$tmp/commands")"
set +e
timeout 3600 "$ENGINE" run --name "$name" -v "$tmp:/fresh:ro" -v "$tmp/out:/fresh-out" \
  localhost/edp-fresh:bookworm-git bash /fresh/inside.sh > build/fresh-check/output.txt 2>&1
run_rc=$?
set -e
t_end=$(date +%s)
cp "$tmp/out/user.txt" build/fresh-check/user.txt 2>/dev/null || true

{
  echo "fresh-check: $ENGINE, $(date -u +%FT%TZ); image ready in $((t_image - t_start)) s, commands in $((t_end - t_image)) s"
  if [ ! -s "$tmp/out/results" ]; then
    echo "the container ended with exit $run_rc before any command ran"
  fi
  while read -r who rc secs cmd; do
    if [ "$who" = user ]; then
      # A user that is not root gets the clear message, at once.
      if [ "$rc" = 77 ] && grep -q 'needs root' "$tmp/out/user.txt"; then verdict=ok; else verdict=FAILED; fi
      printf '%-8s exit %3s %5d s  %s (not root: must stop with 77 and say what needs root)\n' "$verdict" "$rc" "$secs" "$(head -1 "$tmp/commands")"
    else
      if [ "$rc" = 0 ]; then verdict=ok; else verdict=FAILED; fi
      printf '%-8s exit %3s %5d s  %s\n' "$verdict" "$rc" "$secs" "$cmd"
    fi
  done < <(cat "$tmp/out/results" 2>/dev/null)
  n=$(grep -c '^root ' "$tmp/out/results" 2>/dev/null || true)
  if [ "${n:-0}" != "$(wc -l < "$tmp/commands")" ]; then
    echo "only ${n:-0} of $(wc -l < "$tmp/commands") commands ran (container exit $run_rc)"
  fi
  while IFS= read -r cmd; do
    printf '%-8s %s (EDP_FRESH_COMMANDS=%s)\n' "left out" "$cmd" "$EDP_FRESH_COMMANDS"
  done < <(cat "$tmp/left" 2>/dev/null)
} | tee build/fresh-check/report.txt
! grep -q 'FAILED\|^only \|ended with' build/fresh-check/report.txt
