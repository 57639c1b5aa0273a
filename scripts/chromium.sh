#!/usr/bin/env bash
# chromium.sh makes sure a headless-capable Chromium is installed (Debian's `chromium`
# package), installing it with apt-get if it is missing, and prints its path. make verify
# calls it before the operator page's browser test (admin/, TestBrowserScreenshot).
set -euo pipefail

log() { printf 'chromium: %s\n' "$*" >&2; }
die() { printf 'chromium: ERROR: %s\n' "$*" >&2; exit 1; }

find_chromium() {
  local c
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if path="$(find_chromium)"; then
  printf '%s\n' "$path"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "chromium is missing and there is no apt-get; install Chromium and put it on PATH"
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "chromium is missing and installing it needs root (no sudo)"
  SUDO=sudo
fi
log "installing Debian's chromium package with apt-get (a few minutes, once)"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
path="$(find_chromium)" || die "apt-get installed chromium but it is not on PATH"
printf '%s\n' "$path"
