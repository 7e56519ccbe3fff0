"""Celery app for the map peer: the shared app and no-op task, plus a chord callback.

The worker started by run_celery_map.sh loads this module (``celery -A celery_map_tasks``),
so it knows both ``peerbench.noop`` (from ../shared/bench/peers/celery_tasks.py, on
PYTHONPATH) and ``peermap.count``. The broker and result URLs come from PEERBENCH_REDIS_URL,
as in the shared module.
"""

from celery_tasks import app, noop

__all__ = ["app", "count", "noop"]


@app.task(name="peermap.count")
def count(results):
    """Chord callback: receives the list of the header's results; returns how many."""
    return len(results)
