#!/usr/bin/env bash
# Writes docs/faults.md from the rows the suites recorded (t_fault_row):
#   tests/faults-report.sh ROWS_FILE > docs/faults.md
# Each row: pattern|fault|moment|outcome|ms. The page says when and where
# the matrix was measured, so it is never mistaken for a promise.
set -euo pipefail
rows=${1:?usage: faults-report.sh ROWS_FILE}
[ -s "$rows" ] || { echo "faults-report.sh: no rows in $rows" >&2; exit 1; }
version=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
rmqc=$(dpkg-query -W -f='${Version}' librabbitmq-dev 2>/dev/null || echo unknown)
title="The fault matrix" tls_note=""
if [ "${EDP_TLS:-0}" = 1 ]; then
  title="The fault matrix over TLS"
  tls_note="Over TLS: \`make faults TLS=1\` made every node a TLS node (TLS listener
only, client certificates required) and every connection amqps://; the
fault proxy relays the TLS bytes, so its cuts land in the middle of TLS
records. The same suites and checks as [faults.md](faults.md).

"
fi
cat <<HEAD
# $title

${tls_note}Written by \`make faults\` from the run of $(date -u '+%Y-%m-%d %H:%M UTC')
on $(nproc) cores, RabbitMQ $version, rabbitmq-c $rmqc. Each row is one
test in \`tests/integ_faults.c\` (or a pattern suite) that injected the
fault at that moment and checked the outcome by accounting: which message
ids were confirmed, returned, nacked, delivered and acked, and what the
queue held afterwards. "ms" is the time from the fault to recovery (or to
detection, where the row says so). A failed check fails the suite, so a
row here is a measured outcome, not a claim. \`make check\` runs the same
suite without the slow rows (consumer_timeout: the broker checks it once a
minute).

Network faults go through \`tests/faultproxy.c\`, a TCP proxy between the
client and the node (RST, a cut after N bytes in the middle of a frame,
a half-open stall); broker faults through \`rabbitmqctl\` of the private
node (memory and disk alarms, queue deletion, consumer_timeout) or the protocol
itself (a passive declare of a missing queue, a publish to a missing
exchange).

HEAD
awk -F'|' '
  { if (!($1 in seen)) { order[++n] = $1; seen[$1] = 1 }
    rows[$1] = rows[$1] sprintf("| %s | %s | %s | %s |\n", $2, $3, $4, $5) }
  END {
    for (i = 1; i <= n; i++) {
      printf "## %s\n\n| fault | moment | outcome | ms |\n|---|---|---|---|\n%s\n", order[i], rows[order[i]]
    }
  }' "$rows"
