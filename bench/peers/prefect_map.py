"""Prefect 3 map peer, one measured process (run_prefect_map.sh starts it).

Local ephemeral mode, as ../shared/bench/peers/prefect_bench.py: no PREFECT_API_URL, so the
first flow run in this process makes Prefect spawn its temporary API server (a uvicorn
subprocess, SQLite under $PREFECT_HOME); it is stopped at exit.

The shape: a sync flow whose body is

    futures = noop.map(range(N))   # N task runs submitted to the flow's task runner
    results = futures.result()     # wait for every one and collect the N results

with the default task runner (ThreadPoolTaskRunner(), no max_workers: Prefect 3.9 then uses
PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS or, unset, sys.maxsize, i.e. one thread per
pending task run). The effective max_workers and the peak thread count are recorded.

  cold_import_s          `import prefect` + defining the flow and task
  cold_first_run_s       the first map flow call in this process (N items; includes starting
                         the temp API server). It is also the warm-up of the steady runs.
  cold_total_s           process launch (--launched, set by the runner) -> first run done
  map<N>_wall_s          --runs steady calls of the flow (flow run creation, the map, the
                         waits, the flow's end; a sync flow ends up to ~1 s late because it
                         joins its heartbeat thread, see the shared README's pitfall 4)
  map<N>_inner_s         inside the flow body: from noop.map() to the last result
  map<N>_per_item_s      wall / N;  map<N>_throughput_per_s: N / wall
  map<N>_peak_threads    most Python threads alive in this process during the call
  map<N>_recorded_s      flow call -> the API server reports all N task runs of that flow
                         run COMPLETED (polled every 0.2 s, bounded by --record-timeout).
                         Prefect 3 creates task runs in the client and sends their states to
                         the server as events, which it writes to SQLite afterwards; each run
                         waits for this, so the next does not start behind the backlog.
  (the cold run has the same _inner_s / _recorded_s figures as cold_first_run_map<N>_*)
If a steady N-item run takes more than --slow-after s (600), the same is measured for
--fallback-items (100) too, with that count in the key names (map100_*).
--prime: the runner's first process on a fresh PREFECT_HOME (DB migrations) runs with
--runs 0; its cold_* figures are passed back with --prime-json and stored as first_ever_*.
Prints one JSON document on stdout.
"""

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from importlib import metadata  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.context import get_run_context  # noqa: E402


@task
def noop(i):
    return i


@flow
def map_flow(n: int):
    ctx = get_run_context()
    runner = ctx.task_runner
    t = time.perf_counter()
    futures = noop.map(range(n))
    results = futures.result()
    inner = time.perf_counter() - t
    if results != list(range(n)):
        raise RuntimeError(f"map of {n}: got {len(results)} results, not 0..{n - 1}")
    return inner, type(runner).__name__, getattr(runner, "_max_workers", None), ctx.flow_run.id


_T_DEFINED = time.perf_counter()


class PeakThreads:
    """Samples threading.active_count() every 5 ms while the block runs."""

    def __enter__(self):
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, threading.active_count())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak -= 1  # the sampler itself


def completed_task_runs(client, flow_run_id) -> int:
    """How many of the flow run's task runs the API server has recorded as COMPLETED."""
    body = {
        "flow_runs": {"id": {"any_": [str(flow_run_id)]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    response = client._client.post("/task_runs/count", json=body)
    response.raise_for_status()
    return int(response.json())


def timed_map(n: int, record_timeout: float) -> dict:
    """One flow call; then polls the API until all n task runs are recorded COMPLETED."""
    with PeakThreads() as peak:
        t = time.perf_counter()
        inner, runner, max_workers, flow_run_id = map_flow(n)
        wall = time.perf_counter() - t
    returned_at = time.time()
    # Prefect 3 sends task-run states to its server as events, which it writes to SQLite
    # afterwards. Wait until they are all stored (so the next run does not start behind a
    # backlog) and time it: the figure comparable to an engine that commits every result.
    recorded = None
    with get_client(sync_client=True) as client:
        while True:
            done = completed_task_runs(client, flow_run_id)
            now = time.perf_counter() - t
            if done >= n:
                recorded = now
                break
            if now > record_timeout:
                break
            time.sleep(0.2)
    return {
        "wall": wall,
        "returned_at": returned_at,
        "inner": inner,
        "recorded": recorded,
        "recorded_count": done,
        "peak": peak.peak,
        "runner": runner,
        "max_workers": max_workers,
    }


def stats(xs: list[float]) -> dict:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
        "samples": xs,
    }


def measure(n: int, runs: int, out: dict, record_timeout: float) -> float:
    """`runs` steady calls of the n-item map flow into out["map<n>_*"]; returns the max wall."""
    samples = [timed_map(n, record_timeout) for _ in range(runs)]
    for i, s in enumerate(samples):
        print(f"run {i + 1}/{runs}: map{n} {describe(s)}", file=sys.stderr)
    walls = [s["wall"] for s in samples]
    out[f"map{n}_wall_s"] = stats(walls)
    out[f"map{n}_inner_s"] = stats([s["inner"] for s in samples])
    out[f"map{n}_per_item_s"] = stats([w / n for w in walls])
    out[f"map{n}_throughput_per_s"] = stats([n / w for w in walls])
    out[f"map{n}_peak_threads"] = stats([s["peak"] for s in samples])
    recorded = [s["recorded"] for s in samples if s["recorded"] is not None]
    if recorded:
        out[f"map{n}_recorded_s"] = stats(recorded)
    if len(recorded) < len(samples):
        out["notes"].append(
            f"map{n}: {len(samples) - len(recorded)} run(s) not all recorded COMPLETED by the "
            f"server within {record_timeout:g} s (counts: {[s['recorded_count'] for s in samples]})"
        )
    return max(walls)


def describe(s: dict) -> str:
    rec = "not all within the bound" if s["recorded"] is None else f"{s['recorded']:.2f}s"
    return (
        f"wall {s['wall']:.2f}s inner {s['inner']:.2f}s, all recorded by the server {rec} "
        f"(peak {s['peak']} threads)"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--fallback-items", type=int, default=100)
    ap.add_argument("--slow-after", type=float, default=600.0)
    ap.add_argument(
        "--record-timeout",
        type=float,
        default=600.0,
        help="s from the flow call on to wait until the server has recorded every task run",
    )
    ap.add_argument("--launched", type=float, default=None, help="time.time() at launch")
    ap.add_argument("--prime-json", help="the priming process's output (first_ever_*)")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()

    load_before = os.getloadavg()
    n = args.items
    cold = timed_map(n, args.record_timeout)
    out: dict = {
        "engine": "prefect_map",
        "versions": {
            p: metadata.version(p)
            for p in ("prefect", "pydantic", "sqlalchemy", "aiosqlite", "uvicorn", "httpx")
        },
        "python": platform.python_version(),
        "params": {k: v for k, v in vars(args).items() if k not in ("launched", "prime_json")},
        "task_runner": {
            "class": cold["runner"],
            "max_workers": cold["max_workers"],
            "max_workers_is_sys_maxsize": cold["max_workers"] == sys.maxsize,
            "env_PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": os.environ.get(
                "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS"
            ),
        },
        "loadavg_before": load_before,
        "notes": list(args.note),
        "cold_import_s": stats([_T_DEFINED - _T0]),
        "cold_first_run_s": stats([cold["wall"]]),
        f"cold_first_run_map{n}_inner_s": stats([cold["inner"]]),
    }
    if cold["recorded"] is not None:
        out[f"cold_first_run_map{n}_recorded_s"] = stats([cold["recorded"]])
    if args.launched:
        out["cold_total_s"] = stats([cold["returned_at"] - args.launched])
    print(
        f"cold: import {_T_DEFINED - _T0:.2f}s first map{n} run: {describe(cold)}; "
        f"{cold['runner']} max_workers={cold['max_workers']}",
        file=sys.stderr,
    )
    if args.prime_json:
        with open(args.prime_json) as f:
            prime = json.load(f)
        for k, v in prime.items():
            if k.startswith("cold_") and isinstance(v, dict):
                out["first_ever_" + k[len("cold_") :]] = v

    if args.runs:
        slowest = measure(n, args.runs, out, args.record_timeout)
        if slowest > args.slow_after and args.fallback_items:
            out["notes"].append(
                f"a map{n} run took {slowest:.0f} s (> {args.slow_after:g} s): "
                f"map{args.fallback_items} measured too"
            )
            timed_map(args.fallback_items, args.record_timeout)  # warm-up of the smaller shape
            measure(args.fallback_items, args.runs, out, args.record_timeout)

    out["loadavg_after"] = os.getloadavg()
    out["notes"].append(
        f"loadavg before: {' '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' '.join(f'{x:.2f}' for x in out['loadavg_after'])}"
    )
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
