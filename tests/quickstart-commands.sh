#!/usr/bin/env bash
# Prints the README's quick-start commands, one a line, comments dropped:
# the first ```sh block under "## Quick start". make fresh-check runs them
# and the toolkit test holds .ci/run to the test command among them, so
# neither can drift from what the README tells a newcomer.
set -euo pipefail
cd "$(dirname "$0")/.."
awk '/^## Quick start/ {q = 1; next} q && /^```sh/ {b = 1; next} b && /^```/ {exit} b' README.md |
  sed -E 's/[[:space:]]+#.*$//; s/^[[:space:]]+//' | grep -v '^$'
