#!/usr/bin/env bash
# The README's quick start on a bare Debian 12, as root with nothing but
# git installed: Debian's cloud and container images have no make and no
# compiler. Installs make and gcc from Debian's packages when they are
# missing, then runs make with the arguments; `make deps`, which demo and
# check run first, installs the rest.
#   ./quickstart.sh demo    ./quickstart.sh check    ./quickstart.sh TARGET...
# Not root and something missing: says which packages and the apt-get
# command that installs them, and exits 77 before doing anything. With
# everything installed it runs for any user, as make does.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -gt 0 ] || { echo "usage: ./quickstart.sh demo|check|TARGET..." >&2; exit 64; }
need=()
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh: ${need[*]} not installed; installing Debian packages needs root:" >&2
    echo "  run ./quickstart.sh $* as root, or first: sudo apt-get install ${need[*]}" >&2
    exit 77
  fi
  echo "quickstart.sh: installing ${need[*]} from Debian's packages" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
exec make "$@"
