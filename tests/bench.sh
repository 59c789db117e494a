#!/usr/bin/env bash
# Runs each benchmark program given as argument (each prints a markdown
# section on stdout, progress on stderr) and writes docs/BENCHMARKS.md.
# Expects EDP_URL (and EDP_BROKER_DIR) from with-broker.sh.
set -euo pipefail
out=docs/BENCHMARKS.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,"
  echo "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?'),"
  echo "rabbitmq-c $(dpkg-query -W -f='${Version}' librabbitmq-dev 2>/dev/null || echo '?')."
  echo "Every figure is measured in the same run against the same private node;"
  echo "ratios compare runs of one table, so they hold on a noisy shared machine"
  echo "where absolute rates do not."
  echo
} > "$tmp"
fail=0
for b in "$@"; do
  echo "== $b" >&2
  if ! "$b" >> "$tmp"; then
    echo "benchmark $b failed" >&2
    fail=1
  fi
  echo >> "$tmp"
done
mkdir -p docs
cp "$tmp" "$out"
echo "wrote $out" >&2
exit $fail
