"""Celery 5 map peer (client side): a chord of N no-op tasks and one callback.

Assumes a worker is already running against PEERBENCH_REDIS_URL (run_celery_map.sh starts
one: prefork pool, concurrency 2, app ``celery_map_tasks``). The fan-out is

    chord(noop.s(i) for i in range(N))(count.s())

``count`` receives the list of the N results and returns its length, which is checked. Each
sample is the wall time from just before ``apply_async()`` (the signature is built before the
clock starts) to ``.get()`` returning the callback's result: sending the N header messages,
the 2 pool processes running them, the Redis backend's chord counter, and the callback.

  warm-up             one chord of --warmup-items (20), not timed
  chord<N>_*          --runs (3) chords of --items (1,000):
                        wall_s, enqueue_s (the apply_async() call alone),
                        per_item_s (wall / N), throughput_per_s (N / wall)
  chord<BIG>_wall_s   one chord of --big-items (10,000) after the runs, if its callback
                      returns within --big-timeout s (120); otherwise chord<BIG>_done is
                      false, chord<BIG>_exceeded_s holds the bound, and
                      chord<BIG>_header_done_by_deadline how many header tasks had finished
                      (the worker keeps going until the runner stops it)

Prints one JSON document on stdout (the runner saves it) and progress on stderr.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata

from celery import chord
from celery.exceptions import TimeoutError as CeleryTimeout
from celery_map_tasks import app, count, noop


def wait_for_worker(timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0)
        if replies:
            return replies
    raise SystemExit(f"no Celery worker answered ping within {timeout:.0f}s")


def stats(xs: list[float]) -> dict:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
        "samples": xs,
    }


def run_chord(items: int, timeout: float) -> tuple[float, float, object]:
    """One chord; returns (wall, enqueue, result handle). Raises CeleryTimeout past timeout."""
    sig = chord([noop.s(i) for i in range(items)], count.s())
    t0 = time.perf_counter()
    res = sig.apply_async()
    t_enq = time.perf_counter() - t0
    got = res.get(timeout=timeout)
    wall = time.perf_counter() - t0
    if got != items:
        raise SystemExit(f"chord of {items}: the callback saw {got} results")
    return wall, t_enq, res


def forget(res) -> None:
    """Drop the chord's stored results (not timed) so Redis stays small between runs."""
    try:
        if res.parent is not None:
            res.parent.forget()
        res.forget()
    except Exception as exc:  # housekeeping only
        print(f"  (forget failed: {exc!r})", file=sys.stderr)


def run_big(big: int, bound: float) -> dict:
    """One chord of `big` items, given `bound` seconds from apply_async() on."""
    out: dict = {}
    key = f"chord{big}"
    sig = chord([noop.s(i) for i in range(big)], count.s())
    t0 = time.perf_counter()
    res = sig.apply_async()
    e = time.perf_counter() - t0
    try:
        got = res.get(timeout=max(0.01, bound - e))  # 0 would mean no bound
    except CeleryTimeout:
        # header results are kept per task in the backend: count the finished ones
        header_done = res.parent.completed_count() if res.parent is not None else None
        out[f"{key}_done"] = False
        out[f"{key}_exceeded_s"] = bound
        out[f"{key}_header_done_by_deadline"] = header_done
        msg = (
            f"{key}: > {bound:g} s (callback not back; {header_done} of {big} "
            f"header tasks done by then; apply_async took {e:.2f} s)"
        )
    else:
        w = time.perf_counter() - t0
        if got != big:
            raise SystemExit(f"chord of {big}: the callback saw {got} results")
        forget(res)
        out[f"{key}_done"] = True
        out[f"{key}_wall_s"] = stats([w])
        out[f"{key}_enqueue_s"] = stats([e])
        out[f"{key}_throughput_per_s"] = stats([big / w])
        msg = f"{key}: {w:.2f} s (apply_async {e:.2f} s), one run"
    print(msg, file=sys.stderr)
    out["note"] = msg
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--warmup-items", type=int, default=20)
    ap.add_argument("--big-items", type=int, default=10000, help="0 to skip")
    ap.add_argument("--big-timeout", type=float, default=120.0)
    args = ap.parse_args()

    load_before = os.getloadavg()
    replies = wait_for_worker()
    # warm-up: both pool processes import the tasks and open their connections
    _, _, res = run_chord(args.warmup_items, timeout=120)
    forget(res)

    n = args.items
    wall, enq = [], []
    for i in range(args.runs):
        w, e, res = run_chord(n, timeout=600)
        forget(res)
        wall.append(w)
        enq.append(e)
        print(
            f"run {i + 1}/{args.runs}: chord{n} {w:.3f}s (apply_async {e:.3f}s, "
            f"{n / w:.0f} items/s)",
            file=sys.stderr,
        )

    out: dict = {
        "engine": "celery_map",
        "versions": {
            **{p: metadata.version(p) for p in ("celery", "kombu", "billiard", "redis")},
            "redis-server": os.environ.get("PEERBENCH_REDIS_VERSION", "?"),
        },
        "python": platform.python_version(),
        "workers": replies,
        "params": {**vars(args), "pool": "prefork", "concurrency": 2},
        "loadavg_before": load_before,
        "notes": [],
        f"chord{n}_wall_s": stats(wall),
        f"chord{n}_enqueue_s": stats(enq),
        f"chord{n}_per_item_s": stats([x / n for x in wall]),
        f"chord{n}_throughput_per_s": stats([n / x for x in wall]),
    }

    if args.big_items:
        big = run_big(args.big_items, args.big_timeout)
        # the big chord's handles are gone now: collect them while Python is still up (a
        # pending handle unsubscribes from Redis when collected; at exit that fails noisily)
        gc.collect()
        out["notes"].append(big.pop("note"))
        out.update(big)

    out["loadavg_after"] = os.getloadavg()
    out["notes"].append(
        f"loadavg before: {' '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' '.join(f'{x:.2f}' for x in out['loadavg_after'])}"
    )
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
