#!/usr/bin/env bash
# Draws the benchmark plots (SVG) from the CSV files the bench programs
# wrote (EDP_BENCH_DATA), one gnuplot script per plot in bench/plots/:
#   tests/plots.sh [DIR]        DIR holds the CSV files and gets the SVGs
#                               (default docs/img)
# Each script names its CSV files on a '# data:' line; a plot whose data
# is missing is skipped. When a CSV file says it comes from a reduced run
# (EDP_BENCH_QUICK=1), the plot's title says so too. Without gnuplot it
# prints how to get the pictures and exits 0: a plot never fails a
# benchmark.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-docs/img}
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "plots: gnuplot not found, so no pictures were drawn (the tables are" >&2
  echo "plots: written). To draw them from the CSV files in $dir:" >&2
  echo "plots:   apt-get install -y gnuplot-nox && make plots" >&2
  exit 0
fi
rc=0
for gp in "$here"/bench/plots/*.gp; do
  name=$(basename "$gp" .gp)
  data=$(sed -n 's/^# data: //p' "$gp")
  missing="" note=""
  for f in $data; do
    if [ ! -s "$dir/$f" ]; then
      missing="$missing $f"
    elif head -n 1 "$dir/$f" | grep -q 'reduced run'; then
      note=" (REDUCED RUN, not the benchmark)"
    fi
  done
  if [ -n "$missing" ]; then
    echo "plots: $name skipped, no data:$missing" >&2
    continue
  fi
  if gnuplot -e "dir='$dir'; note='$note'; out='$dir/$name.svg'; plotdir='$here/bench/plots'" "$gp"; then
    echo "plots: wrote $dir/$name.svg" >&2
  else
    echo "plots: $name failed" >&2
    rc=1
  fi
done
# A failed plot is reported; it does not fail the benchmark that called us.
exit $rc
