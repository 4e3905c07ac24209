#!/usr/bin/env bash
# Local stand-ins for the upstream images that docker-compose.yml and the Dockerfile name, for machines that
# cannot reach Docker Hub (tests only; a deployment pulls the real images). For each tag: kept if the engine
# already has it (real or stand-in), else pulled, else built here from Debian bookworm (debootstrap, once).
# Usage: tests/compose/standins/build.sh [WEED_BINARY]   (default: .venv/bin/weed, the dev extra's SeaweedFS)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
weed="${1:-$here/../../../.venv/bin/weed}"
base=sgft-standin/debian:bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# tag | folder | Dockerfile target ("-": the last stage)
standins=(
  "python:3.11.11-slim-bookworm|python|-"
  "nvidia/cuda:13.0.0-base-ubuntu22.04|cuda|-"
  "postgres:16.6-alpine|postgres|-"
  "redis:7.4.1-alpine|redis|-"
  "minio/minio:RELEASE.2025-04-22T22-12-26Z|minio|minio"
  "minio/mc:RELEASE.2025-04-16T18-13-26Z|minio|mc"
)

have() { docker image inspect "$1" >/dev/null 2>&1; }

debian_base() {
  have "$base" && return 0
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
  local root
  root="$(mktemp -d)"
  echo "stand-ins: debootstrap bookworm into $root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  tar -C "$root" -c . | docker import - "$base" >/dev/null
  rm -rf "$root"
}

for entry in "${standins[@]}"; do
  IFS='|' read -r tag folder target <<<"$entry"
  if have "$tag"; then
    echo "stand-ins: $tag present"
    continue
  fi
  if timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
    echo "stand-ins: $tag pulled (the real image)"
    continue
  fi
  debian_base
  context="$(mktemp -d)"
  cp -a "$here/$folder/." "$context/"
  mkdir -p "$context/ca"  # the machine's extra CA certificates (pip needs them behind a TLS proxy)
  cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true
  if [ "$folder" = minio ]; then
    [ -x "$weed" ] || { echo "stand-ins: no SeaweedFS binary at $weed (make install)" >&2; exit 1; }
    cp "$weed" "$context/weed"
  fi
  args=(--quiet --tag "$tag" --build-arg "BASE=$base")
  [ "$target" = "-" ] || args+=(--target "$target")
  echo "stand-ins: building $tag"
  if ! log="$(DOCKER_BUILDKIT=0 docker build "${args[@]}" "$context" 2>&1)"; then
    echo "$log" >&2
    exit 1
  fi
  rm -rf "$context"
done
