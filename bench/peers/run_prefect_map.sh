#!/usr/bin/env bash
# Prefect 3 map peer, local ephemeral mode (no PREFECT_API_URL): a sync flow doing
# noop.map(range(ITEMS)) and waiting for every result, default task runner; venv and
# settings as ../shared/bench/peers/run_prefect.sh.
#   usage: bash bench/peers/run_prefect_map.sh [RUNS] [ITEMS]     (defaults 2, 1000)
# Wipes and recreates PREFECT_HOME=$PEERBENCH_ROOT/prefect-map-home (its own, so it never
# races run_prefect.sh's prefect-home), runs one priming process on the fresh DB (a 10-item
# map; its cold figures, migrations included, become first_ever_*), then one measured
# process: a cold first ITEMS-item run (also the warm-up), then RUNS steady runs.
# Result JSON: $PEERBENCH_ROOT/results/prefect_map-<UTC stamp>.json
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/bench/peers}
source "$PEERS_DIR/_common.sh"   # sets PEERBENCH_DIR=$PEERS_DIR, RESULTS_DIR, ensure_venv ...
RUNS=${1:-2}
ITEMS=${2:-1000}
ensure_venv prefect "$PEERBENCH_DIR/requirements-prefect.lock"
VENV=$PEERBENCH_ROOT/venv-prefect

export PREFECT_HOME=$PEERBENCH_ROOT/prefect-map-home
# as run_prefect.sh: migrations on a fresh SQLite file can exceed the default 20 s start-up
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
unset PREFECT_API_URL PREFECT_PROFILE || true
rm -rf "$PREFECT_HOME"
mkdir -p "$PREFECT_HOME"

TS=$(stamp)
TMP=$PEERBENCH_ROOT/prefect-map-runs/$TS
mkdir -p "$TMP"

# run_one NAME ARGS...: one process in its own process group, so that a temp API server
# left behind by a crash can be stopped by that group's id (as run_prefect.sh does).
run_one() {
    local name=$1; shift
    setsid "$VENV/bin/python" "$HERE/prefect_map.py" --launched "$(date +%s.%N)" "$@" \
        >"$TMP/$name.json" 2>"$TMP/$name.log" &
    local pid=$!
    local rc=0
    wait "$pid" || rc=$?
    kill -TERM -- "-$pid" 2>/dev/null || true   # leftovers of our own group only
    grep -E '^(cold|run)' "$TMP/$name.log" >&2 || true
    if [ "$rc" != 0 ]; then
        echo "[peermap] $name failed (rc=$rc); see $TMP/$name.log" >&2
        grep -v '| INFO' "$TMP/$name.log" | tail -15 >&2
        return "$rc"
    fi
}

echo "[peermap] priming process (fresh PREFECT_HOME, DB migrations)" >&2
run_one prime --items 10 --runs 0
echo "[peermap] measured process: cold map$ITEMS, then $RUNS steady runs" >&2
run_one run --items "$ITEMS" --runs "$RUNS" --prime-json "$TMP/prime.json" \
    --note "1 measured process; cold first run = warm-up; $RUNS steady runs of $ITEMS items"

OUT=$RESULTS_DIR/prefect_map-$TS.json
cp "$TMP/run.json" "$OUT.part"
mv "$OUT.part" "$OUT"
"$VENV/bin/python" "$PEERBENCH_DIR/summarize.py" "$OUT"
echo "[peermap] results: $OUT (process logs in $TMP)" >&2
