#!/usr/bin/env bash
# redis.sh makes sure a standalone Redis answers PING on 127.0.0.1:6379,
# starting one if nothing answers. A Redis that already answers is left
# untouched (never restarted, never flushed).
set -euo pipefail

HOST=127.0.0.1
PORT=6379
WAIT_SECS=20

log() { printf 'redis: %s\n' "$*"; }
die() { printf 'redis: ERROR: %s\n' "$*" >&2; exit 1; }

pings() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  [[ "$(timeout 2 redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null || true)" == "PONG" ]]
}

if pings; then
  log "already answering PING on $HOST:$PORT"
  exit 0
fi

bash "$(dirname "$0")/install-redis.sh"
if pings; then # redis-cli was missing: a server may have been answering all along
  log "already answering PING on $HOST:$PORT"
  exit 0
fi

mkdir -p /var/lib/redis /var/log/redis

log "starting redis-server on $HOST:$PORT"
redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log ||
  die "redis-server failed to start (see /var/log/redis/ci.log)"

deadline=$((SECONDS + WAIT_SECS))
until pings; do
  if ((SECONDS >= deadline)); then
    tail -n 20 /var/log/redis/ci.log >&2 2>/dev/null || true
    die "redis on $HOST:$PORT did not answer PING within ${WAIT_SECS}s (see /var/log/redis/ci.log)"
  fi
  sleep 0.2
done
log "ready on $HOST:$PORT"
