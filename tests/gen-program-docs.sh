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
echo
echo "Output. With \`--json\` every event is one JSON object on one line, and"
echo "no event is dropped for what a message carries. JSON strings are UTF-8;"
echo "a value taken from a message (message_id, key, account, reason) that is"
echo "not valid UTF-8 goes out twice: under its name with each invalid byte"
echo "replaced by U+FFFD (readable), and under its name plus \`_b64\` with the"
echo "exact bytes in base64 (RFC 4648, padded), e.g."
echo "\`{\"event\":\"processed\",\"message_id\":\"\\ufffd\\ufffdid\",\"message_id_b64\":\"//5pZA==\"}\`"
echo "for the id bytes \`ff fe 69 64\`. Read \`NAME_b64\` when present, else \`NAME\`."
echo "Text output escapes what a message could use to forge a line or drive"
echo "the terminal: a backslash as \`\\\\\`, newline, CR and tab as \`\\n\`, \`\\r\`,"
echo "\`\\t\`, other control bytes, DEL and bytes that are not UTF-8 as \`\\xHH\`,"
echo "C1 control characters as \`\\u0080\` to \`\\u009f\`."
for p in "$BIN"/edp-*; do
  name=$(basename "$p")
  echo
  echo "## $name"
  echo
  echo '```'
  "$p" --help
  echo '```'
done
