#!/usr/bin/env bash
# Writes the program reference (docs/programs.md) from each program's own
# --help, so the two cannot drift: tests/integ_toolkit.sh regenerates it
# and fails if the committed file differs.
#   tests/gen-program-docs.sh [BIN_DIR] > docs/programs.md
set -euo pipefail
BIN=${1:-bin}
echo "# Program reference"
echo
echo "Generated from each program's \`--help\` by \`tests/gen-program-docs.sh\`"
echo "(\`make docs\`); the test suite fails if this file and the programs disagree."
echo "Every program takes \`--url\` (else \`\$EDP_URL\`), \`--json\`, \`-v\`, \`-h\`"
echo "and \`-V\`, and exits 0 ok, 64 usage, 65 bad data, 69 broker unavailable,"
echo "70 internal error, 77 access refused, 130 interrupted."
for p in "$BIN"/edp-*; do
  name=$(basename "$p")
  echo
  echo "## $name"
  echo
  echo '```'
  "$p" --help
  echo '```'
done
