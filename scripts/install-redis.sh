#!/usr/bin/env bash
# install-redis.sh makes sure redis-server and redis-cli are on PATH, installing
# the Debian package with apt-get when either is missing.
set -euo pipefail

have() { command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; }
have && exit 0

printf 'redis: redis-server or redis-cli not found; installing via apt-get\n'
sudo=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
$sudo apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
have || { printf 'redis: ERROR: redis-server still missing after install\n' >&2; exit 1; }
