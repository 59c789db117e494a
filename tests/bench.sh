#!/usr/bin/env bash
# Runs each benchmark program given as argument (each prints a markdown
# section on stdout, progress on stderr) and writes docs/BENCHMARKS.md:
# the whole file, or with EDP_BENCH_ONLY=1 (make bench BENCH=x) only the
# sections of the programs given.
# Expects EDP_URL (and EDP_BROKER_DIR) from with-broker.sh.
#
# The programs also write the data behind the plots as CSV files into
# EDP_BENCH_DATA (default docs/img); tests/plots.sh then draws them as SVG
# beside the CSV files, when gnuplot is installed. Each section gets an
# image line and a caption for every plot of its program (the '# bench:',
# '# title:' and '# caption:' lines of bench/plots/*.gp). A plot that
# can't be drawn never changes the exit status.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=docs/BENCHMARKS.md
export EDP_BENCH_DATA=${EDP_BENCH_DATA:-docs/img}
mkdir -p docs "$EDP_BENCH_DATA"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

# Image lines (with captions) for the plots of bench program $1.
images() {
  local gp name title caption f links
  for gp in "$here"/bench/plots/*.gp; do
    [ "$(sed -n 's/^# bench: //p' "$gp")" = "$1" ] || continue
    name=$(basename "$gp" .gp)
    title=$(sed -n 's/^# title: //p' "$gp")
    caption=$(sed -n 's/^# caption: //p' "$gp")
    links=""
    for f in $(sed -n 's/^# data: //p' "$gp"); do
      links="$links${links:+, }[$f](img/$f)"
    done
    printf '![%s](img/%s.svg)\n\n*%s* Data: %s.\n\n' \
      "$title" "$name" "$caption" "$links"
  done
}

{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,"
  echo "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?'),"
  echo "rabbitmq-c $(dpkg-query -W -f='${Version}' librabbitmq-dev 2>/dev/null || echo '?')."
  echo "Every figure is measured in the same run against the same private node;"
  echo "ratios compare runs of one table, so they hold on a noisy shared machine"
  echo "where absolute rates do not. The plots are drawn from the same run's"
  echo "data, kept as CSV beside them in docs/img (\`make plots\` redraws them)."
  if [ -n "${EDP_BENCH_QUICK:-}" ] && [ "${EDP_BENCH_QUICK}" != 0 ]; then
    echo
    echo "**Reduced run (EDP_BENCH_QUICK=1): smaller sizes than the benchmark;"
    echo "these are not the benchmark's figures.**"
  fi
  if ! command -v gnuplot >/dev/null 2>&1; then
    echo
    echo "No gnuplot in this run: the pictures below are missing or from an"
    echo "earlier run. \`apt-get install -y gnuplot-nox && make plots\` draws"
    echo "them from this run's CSV files."
  fi
  echo
} > "$tmp"
fail=0
if [ -n "${EDP_BENCH_ONLY:-}" ] && [ -f "$out" ]; then
  # make bench BENCH=x: replace only the sections of the programs run (a
  # section runs from its "## " heading, the program's first line, to the
  # next one) and keep the others, so one benchmark can be rerun on a quiet
  # machine without losing the rest; a new section is appended.
  cp "$out" "$tmp"
  sec=$(mktemp)
  trap 'rm -f "$tmp" "$sec"' EXIT
  for b in "$@"; do
    echo "== $b" >&2
    if ! "$b" > "$sec"; then
      echo "benchmark $b failed" >&2
      fail=1
      continue
    fi
    heading=$(grep -m1 '^## ' "$sec" || true)
    if [ -z "$heading" ]; then
      echo "benchmark $b printed no '## ' heading" >&2
      fail=1
      continue
    fi
    {
      echo
      echo "This section alone: \`make bench BENCH=${b##*edp-bench-}\` on $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)."
      echo
      images "$(basename "$b")"
    } > "$sec.tail"
    awk -v h="$heading" -v f="$sec" -v t="$sec.tail" '
      function emit(first) {
        first = 1
        while ((getline l < f) > 0) {
          print l
          if (first && l == h) { while ((getline m < t) > 0) print m; first = 0 }
        }
      }
      $0 == h { emit(); skip = 1; done = 1; next }
      skip && /^## / { skip = 0 }
      !skip { print }
      END { if (!done) { print ""; emit() } }' "$tmp" > "$tmp.new"
    mv "$tmp.new" "$tmp"
    rm -f "$sec.tail"
  done
else
  for b in "$@"; do
    echo "== $b" >&2
    if ! "$b" >> "$tmp"; then
      echo "benchmark $b failed" >&2
      fail=1
    fi
    echo >> "$tmp"
    images "$(basename "$b")" >> "$tmp"
  done
fi
cp "$tmp" "$out"
echo "wrote $out" >&2
"$here/tests/plots.sh" "$EDP_BENCH_DATA" || echo "bench: some plots failed (the tables are written)" >&2
exit $fail
