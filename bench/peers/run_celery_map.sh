#!/usr/bin/env bash
# Celery 5 map peer: a chord of 1,000 no-op tasks + a callback, Redis broker and result
# backend, one prefork worker with concurrency 2 (= 2 worker processes); set up exactly
# as ../shared/bench/peers/run_celery.sh does (its venv, lock file and Redis settings).
#   usage: bash bench/peers/run_celery_map.sh [RUNS] [BIG_ITEMS] [BIG_TIMEOUT]
#          (defaults 3, 10000, 120; BIG_ITEMS=0 skips the big chord)
# Starts its own redis-server on a free 127.0.0.1 port and its own worker, and stops both
# (by pid) on exit. Result JSON: $PEERBENCH_ROOT/results/celery_map-<UTC stamp>.json
# The shared scripts are found at $PEERS_DIR (default: ../shared/bench/peers from the
# project root, as bench/suite.py does).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/bench/peers}
source "$PEERS_DIR/_common.sh"   # sets PEERBENCH_DIR=$PEERS_DIR, RESULTS_DIR, ensure_venv ...
RUNS=${1:-3}
BIG_ITEMS=${2:-10000}
BIG_TIMEOUT=${3:-120}
ensure_venv celery "$PEERBENCH_DIR/requirements-celery.lock"
VENV=$PEERBENCH_ROOT/venv-celery

if ! command -v redis-server >/dev/null; then
    echo "[peermap] installing redis-server (apt)" >&2
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
fi

WORK=$PEERBENCH_ROOT/celery-map
mkdir -p "$WORK"
PORT=$(free_port)
REDIS_PID="" WORKER_PID=""
cleanup() {
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
    --save '' --appendonly no --dir "$WORK" --daemonize no \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$PORT" ping >/dev/null
PEERBENCH_REDIS_VERSION=$(redis-server --version | awk '{print $3}' | sed 's/^v=//')
export PEERBENCH_REDIS_VERSION
echo "[peermap] redis-server pid $REDIS_PID on 127.0.0.1:$PORT ($PEERBENCH_REDIS_VERSION)" >&2

export PEERBENCH_REDIS_URL=redis://127.0.0.1:$PORT
# the shared app (celery_tasks) and our chord callback (celery_map_tasks)
export PYTHONPATH=$HERE:$PEERBENCH_DIR
cd "$WORK"
"$VENV/bin/celery" -A celery_map_tasks worker --pool=prefork --concurrency=2 \
    --loglevel=WARNING --hostname "peermap@%h" >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
echo "[peermap] celery worker pid $WORKER_PID (prefork, concurrency 2)" >&2

OUT=$RESULTS_DIR/celery_map-$(stamp).json
# write to a temporary name first: a reader looking for the newest celery_map-*.json never
# sees a half-written file
"$VENV/bin/python" "$HERE/celery_map.py" --runs "$RUNS" --big-items "$BIG_ITEMS" \
    --big-timeout "$BIG_TIMEOUT" >"$OUT.part"
mv "$OUT.part" "$OUT"
"$VENV/bin/python" "$PEERBENCH_DIR/summarize.py" "$OUT"
echo "[peermap] results: $OUT" >&2
