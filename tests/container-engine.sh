#!/usr/bin/env bash
# A container engine for make compose-check and make fresh-check: Docker
# when a Docker engine answers, else Debian's podman, set up as this
# machine class needs it. Sourced by tests/compose-check.sh and
# tests/fresh-check.sh, which call:
#   engine_up               pick the engine, start podman's API service;
#                           sets ENGINE (docker|podman) and COMPOSE (argv)
#   engine_images IMAGE...  of debian:12, debian:12-slim and the broker
#                           image docker-compose.yml names (ENGINE_IMAGES),
#                           and its Prometheus image (ENGINE_PROM_IMAGE):
#                           pulled when a registry answers, else built
#                           from Debian's packages (test fixtures only)
#   engine_healthchecks_start
#                           podman without systemd: run health checks
#   engine_down             stop what engine_up started, by PID
# Run as a command: `tests/container-engine.sh probe` says which engine
# runs here and starts a trivial container (exit 0), or says why none can
# (exit 1); `tests/container-engine.sh clean` deletes the state below.
#
# State: EDP_CONTAINER_DIR (default /var/tmp/edp-containers) holds podman's
# configuration, image store, volumes and run files; nothing is written
# under /etc (apt-get installs podman's own files there, as any package).
# Deleting the directory (`clean`) makes the next run a cold one.
# EDP_CONTAINER_IMAGES=pull|build forces where the images come from.

ENGINE_DIR=${EDP_CONTAINER_DIR:-/var/tmp/edp-containers}
ENGINE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The broker image docker-compose.yml names, and the Debian images the
# Dockerfile builds on.
# Qualified names: podman would file an imported "debian:12" under
# localhost/, where a FROM debian:12 may not look.
ENGINE_BROKER_IMAGE=docker.io/library/rabbitmq:3.10-management
ENGINE_BASE_IMAGES=(docker.io/library/debian:12 docker.io/library/debian:12-slim)
ENGINE_IMAGES=("${ENGINE_BASE_IMAGES[@]}" "$ENGINE_BROKER_IMAGE")
# The metrics profile's Prometheus (prom/prometheus:v2.42.0 in the compose
# file), asked for only by the runs that start that profile.
ENGINE_PROM_IMAGE=docker.io/prom/prometheus:v2.42.0
ENGINE=
COMPOSE=()
engine_service_pid=
engine_health_pid=

engine_log() { echo "container-engine: $*" >&2; }

# A wait with a bound: engine_wait SECONDS CMD... runs CMD every 0.5 s
# until it succeeds (0) or SECONDS passed (1).
engine_wait() {
  local s=$1 i; shift
  for ((i = 0; i < s * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

engine_apt() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    engine_log "needs ${missing[*]} from Debian's packages: run as root, or apt-get install them first"
    return 1
  fi
  engine_log "installing ${missing[*]}"
  apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

docker_engine_answers() {
  command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

# podman as root on a Debian 12 machine without systemd, in a sandbox
# that may not raise rlimits. Each setting says why.
podman_config() {
  mkdir -p "$ENGINE_DIR/conf" "$ENGINE_DIR/networks" "$ENGINE_DIR/run"
  cat > "$ENGINE_DIR/conf/containers.conf" <<CONF
[containers]
# podman's root default raises nofile and nproc above what this sandbox
# lets a process raise them to, and every container start fails then.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun refuses the hybrid cgroup v1/v2 layout these machines have.
runtime = "runc"
# No systemd runs (PID 1 is not systemd): manage cgroups directly.
cgroup_manager = "cgroupfs"
# The default events logger is the systemd journal, which is absent.
events_logger = "file"
tmp_dir = "$ENGINE_DIR/run/libpod"

[network]
# netavark + aardvark-dns give the compose networks their DNS names
# (rabbitmq, rabbitmq-2...); its files go here, not under /etc.
network_backend = "netavark"
network_config_dir = "$ENGINE_DIR/networks"
CONF
  cat > "$ENGINE_DIR/conf/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$ENGINE_DIR/storage"
runroot = "$ENGINE_DIR/run/storage"
CONF
  export CONTAINERS_CONF=$ENGINE_DIR/conf/containers.conf
  export CONTAINERS_STORAGE_CONF=$ENGINE_DIR/conf/storage.conf
}

engine_up() {
  if [ "${EDP_CONTAINER_ENGINE:-}" != podman ] && docker_engine_answers; then
    ENGINE=docker
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
    engine_log "Docker engine $(docker version --format '{{.Server.Version}}' 2>/dev/null), ${COMPOSE[*]}"
    return 0
  fi
  # podman 4.3 with Debian's docker-compose 1.29 speaking to podman's
  # Docker-compatible API: podman-compose 1.0.3 has no profiles and
  # ignores depends_on: service_healthy, so it cannot run this stack.
  engine_apt podman runc netavark aardvark-dns iptables docker-compose || return 1
  podman_config
  ENGINE=podman
  COMPOSE=(docker-compose)
  local sock=$ENGINE_DIR/run/podman.$$.sock
  rm -f "$sock"
  # --time=0: the service stays up until we stop it (by its PID).
  podman system service --time=0 "unix://$sock" >"$ENGINE_DIR/run/service.$$.log" 2>&1 &
  engine_service_pid=$!
  if ! engine_wait 30 podman --url "unix://$sock" version; then
    engine_log "podman's API service did not answer within 30 s:"
    tail -5 "$ENGINE_DIR/run/service.$$.log" >&2
    engine_down
    return 1
  fi
  export DOCKER_HOST=unix://$sock
  # docker-compose asks the API for the Docker version it speaks.
  export COMPOSE_API_VERSION=${COMPOSE_API_VERSION:-1.40}
  engine_log "podman $(podman version --format '{{.Client.Version}}'), docker-compose $(docker-compose version --short) over $sock"
}

# Without systemd, podman never runs a container's health check by
# itself (it would use systemd timers), so the containers would stay
# "starting" and docker-compose would wait for service_healthy forever.
# This loop runs the checks of the containers that are not healthy yet,
# every 3 s (each check starts an Erlang VM: healthy ones are left alone).
engine_healthchecks_start() {
  [ "$ENGINE" = podman ] || return 0
  (
    while :; do
      podman ps --format '{{.ID}} {{.Status}}' 2>/dev/null |
        awk '/\((starting|unhealthy)\)/ {print $1}' |
        while read -r id; do podman healthcheck run "$id" >/dev/null 2>&1 || true; done
      sleep 3
    done
  ) &
  engine_health_pid=$!
}

engine_down() {
  if [ -n "$engine_health_pid" ]; then
    kill "$engine_health_pid" 2>/dev/null || true
    wait "$engine_health_pid" 2>/dev/null || true
    engine_health_pid=
  fi
  if [ -n "$engine_service_pid" ]; then
    kill "$engine_service_pid" 2>/dev/null || true
    wait "$engine_service_pid" 2>/dev/null || true
    engine_service_pid=
    rm -f "$ENGINE_DIR/run/podman.$$.sock"
  fi
}

engine_cli() { "$ENGINE" "$@"; }

engine_has_image() { engine_cli image inspect "$1" >/dev/null 2>&1; }

# A registry answers when Docker Hub's registry accepts a TLS connection
# within 5 s; no proxy support, so EDP_CONTAINER_IMAGES=pull forces it.
registry_answers() {
  case ${EDP_CONTAINER_IMAGES:-} in
    pull) return 0 ;; build) return 1 ;;
  esac
  timeout 5 bash -c 'exec 3<>/dev/tcp/registry-1.docker.io/443' 2>/dev/null
}

# The mirror the host's apt uses, so the images install from the same
# place (and work where only that mirror is reachable).
debian_mirror() {
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${m:-http://deb.debian.org/debian}"
}

# The Debian base images from debootstrap (minbase, bookworm), imported
# under the names the Dockerfile uses. Official debian:12-slim is a
# trimmed debian:12; both are this same minimal system here.
build_base_images() {
  engine_apt debootstrap || return 1
  local root=$ENGINE_DIR/rootfs mirror
  mirror=$(debian_mirror)
  rm -rf "$root"
  engine_log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$ENGINE_DIR/debootstrap.log" 2>&1 || {
    engine_log "debootstrap failed; see $ENGINE_DIR/debootstrap.log"; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | engine_cli import --change 'CMD ["bash"]' - docker.io/library/debian:12 \
    >/dev/null 2>"$ENGINE_DIR/import.log" || { engine_log "import failed:"; cat "$ENGINE_DIR/import.log" >&2; return 1; }
  engine_cli tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  rm -rf "$root"
}

# build_standin IMAGE NAME: builds tests/containers/NAME.Dockerfile as
# IMAGE, quietly (the output in EDP_CONTAINER_DIR/NAME-build.log).
build_standin() {
  local img=$1 name=$2 t0=$SECONDS
  engine_cli build -q -t "$img" -f "$ENGINE_REPO/tests/containers/$name.Dockerfile" \
    "$ENGINE_REPO/tests/containers" >"$ENGINE_DIR/$name-build.log" 2>&1 ||
    { engine_log "building the $name stand-in failed:"; tail -20 "$ENGINE_DIR/$name-build.log" >&2; return 1; }
  engine_log "$name stand-in $img built in $((SECONDS - t0)) s"
}

# engine_images IMAGE...: those of ENGINE_IMAGES and ENGINE_PROM_IMAGE
# ready to run.
engine_images() {
  local img missing=()
  for img in "$@"; do
    engine_has_image "$img" || missing+=("$img")
  done
  [ ${#missing[@]} = 0 ] && return 0
  if registry_answers; then
    for img in "${missing[@]}"; do engine_cli pull -q "$img" >/dev/null || return 1; done
    return 0
  fi
  engine_log "no registry answers: building ${missing[*]} from Debian's packages"
  if ! engine_has_image docker.io/library/debian:12 || ! engine_has_image docker.io/library/debian:12-slim; then
    build_base_images || return 1
  fi
  if [[ " ${missing[*]} " == *" $ENGINE_BROKER_IMAGE "* ]]; then
    # A stand-in for the official image, a test fixture only: Debian's
    # rabbitmq-server (3.10.8, the version the compose file names).
    build_standin "$ENGINE_BROKER_IMAGE" rabbitmq || return 1
  fi
  if [[ " ${missing[*]} " == *" $ENGINE_PROM_IMAGE "* ]]; then
    # Likewise Debian's prometheus (2.42.0), started as the official
    # image starts it.
    build_standin "$ENGINE_PROM_IMAGE" prometheus || return 1
  fi
}

# `tests/container-engine.sh probe|clean`
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case ${1:-} in
    probe)
      trap engine_down EXIT
      engine_up || exit 1
      engine_images "${ENGINE_IMAGES[@]}" || { engine_log "cannot get the images"; exit 1; }
      if ! out=$(timeout 120 "$ENGINE" run --rm docker.io/library/debian:12 echo container-ok 2>&1) || [ "$out" != container-ok ]; then
        engine_log "a trivial container does not start: $out"; exit 1
      fi
      engine_log "$ENGINE runs containers here" ;;
    clean)
      if [ -d "$ENGINE_DIR/conf" ] && command -v podman >/dev/null; then
        podman_config
        podman system reset --force >/dev/null 2>&1 || true
      fi
      rm -rf "$ENGINE_DIR" ;;
    *) echo "usage: tests/container-engine.sh probe|clean" >&2; exit 64 ;;
  esac
fi
