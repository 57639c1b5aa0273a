#!/usr/bin/env bash
# cluster.sh starts (or stops) a local 3-master Redis Cluster on
# 127.0.0.1:7000-7002 for tests. It is idempotent: a healthy cluster is left
# alone; anything else is torn down and recreated from scratch.
#
# Usage:
#   scripts/cluster.sh        # ensure the cluster is up
#   scripts/cluster.sh stop   # shut it down and remove its work dir
#
# Environment:
#   CLUSTER_DIR   work dir for node dirs, nodes.conf and logs
#                 (default /tmp/cacheaside-cluster)
set -euo pipefail

HOST=127.0.0.1
PORTS=(7000 7001 7002)
DIR="${CLUSTER_DIR:-/tmp/cacheaside-cluster}"
WAIT_SECS=20

log() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: ERROR: %s\n' "$*" >&2; exit 1; }

case "${1:-start}" in
  start | up) bash "$(dirname "$0")/install-redis.sh" ;;
esac
for bin in redis-server redis-cli; do
  command -v "$bin" >/dev/null 2>&1 || die "$bin not found on PATH"
done

cli() { # cli PORT ARGS...
  local port=$1; shift
  timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null
}

pings() { # pings PORT: true if the node answers PONG within a second
  [[ "$(timeout 1 redis-cli -h "$HOST" -p "$1" ping 2>/dev/null || true)" == "PONG" ]]
}

info_field() { # info_field PORT FIELD -> value from CLUSTER INFO
  cli "$1" cluster info | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}

# healthy: all nodes answer, the cluster is ok everywhere, 3 masters (all
# known to each node) and all 16384 slots assigned.
healthy() {
  local p
  for p in "${PORTS[@]}"; do
    pings "$p" || return 1
    [[ "$(info_field "$p" cluster_state)" == "ok" ]] || return 1
    [[ "$(info_field "$p" cluster_slots_assigned)" == "16384" ]] || return 1
    [[ "$(info_field "$p" cluster_slots_ok)" == "16384" ]] || return 1
    [[ "$(info_field "$p" cluster_known_nodes)" == "3" ]] || return 1
    [[ "$(info_field "$p" cluster_size)" == "3" ]] || return 1
  done
  local masters
  masters=$(cli "${PORTS[0]}" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9' | wc -l)
  [[ "$masters" == "3" ]] || return 1
}

stop_all() {
  local p i
  for p in "${PORTS[@]}"; do
    if pings "$p"; then
      log "shutting down node $p"
      cli "$p" shutdown nosave >/dev/null || true
    fi
  done
  local deadline=$((SECONDS + 10))
  for p in "${PORTS[@]}"; do
    while pings "$p"; do
      ((SECONDS < deadline)) || die "node $p still answering after shutdown"
      sleep 0.1
    done
  done
  # A node we started earlier that no longer answers (hung, mid-load) is
  # stopped by the pid it recorded.
  for p in "${PORTS[@]}"; do
    local pidf="$DIR/$p.pid" pid
    [[ -f "$pidf" ]] || continue
    pid=$(cat "$pidf" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
      grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
      log "killing unresponsive node $p (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && die "node $p (pid $pid) did not exit"
    fi
  done
  if [[ -d "$DIR" ]]; then
    rm -rf -- "$DIR"
  fi
  return 0
}

start_all() {
  local p
  for p in "${PORTS[@]}"; do
    mkdir -p "$DIR/$p"
    log "starting node $p"
    redis-server \
      --bind "$HOST" \
      --port "$p" \
      --cluster-enabled yes \
      --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000 \
      --save "" --appendonly no \
      --dir "$DIR/$p" \
      --logfile "$DIR/$p.log" \
      --pidfile "$DIR/$p.pid" \
      --daemonize yes >/dev/null ||
      die "redis-server failed to start on port $p (see $DIR/$p.log)"
  done
  local deadline=$((SECONDS + 10))
  for p in "${PORTS[@]}"; do
    until pings "$p"; do
      ((SECONDS < deadline)) || die "node $p did not answer PING (see $DIR/$p.log)"
      sleep 0.1
    done
  done
}

create_cluster() {
  local addrs=() p
  for p in "${PORTS[@]}"; do addrs+=("$HOST:$p"); done
  log "creating cluster ${addrs[*]}"
  if ! out=$(redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes 2>&1); then
    printf '%s\n' "$out" >&2
    die "redis-cli --cluster create failed"
  fi
}

wait_ready() {
  local deadline=$((SECONDS + WAIT_SECS)) p ok
  log "waiting for cluster_state:ok (up to ${WAIT_SECS}s)"
  while ((SECONDS < deadline)); do
    ok=1
    for p in "${PORTS[@]}"; do
      [[ "$(info_field "$p" cluster_state)" == "ok" ]] || { ok=0; break; }
    done
    if ((ok)) && [[ "$(timeout 5 redis-cli -c -h "$HOST" -p "${PORTS[0]}" set cacheaside:cluster:probe y 2>/dev/null)" == "OK" ]]; then
      timeout 5 redis-cli -c -h "$HOST" -p "${PORTS[0]}" del cacheaside:cluster:probe >/dev/null 2>&1 || true
      healthy || { sleep 0.2; continue; }
      return 0
    fi
    sleep 0.2
  done
  for p in "${PORTS[@]}"; do
    printf -- '--- node %s cluster info ---\n' "$p" >&2
    cli "$p" cluster info >&2 || printf '(no answer)\n' >&2
  done
  die "cluster did not become ready within ${WAIT_SECS}s (logs in $DIR)"
}

cmd="${1:-start}"
case "$cmd" in
  stop)
    stop_all
    log "stopped; removed $DIR"
    ;;
  start | up)
    if healthy; then
      log "already running and healthy on ports ${PORTS[*]} (3 masters, 16384 slots)"
      exit 0
    fi
    up=0
    for p in "${PORTS[@]}"; do pings "$p" && up=$((up + 1)); done
    if ((up > 0)) || [[ -e "$DIR" ]]; then
      log "existing nodes/state not a healthy cluster ($up/3 nodes up); resetting"
    fi
    stop_all
    start_all
    create_cluster
    wait_ready
    log "ready on ports ${PORTS[*]} (3 masters, 16384 slots)"
    ;;
  *)
    die "unknown command '$cmd' (usage: $0 [start|stop])"
    ;;
esac
