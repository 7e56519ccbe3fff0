"""What ``GET /health`` says about the django-q2 worker clusters.

Each cluster's sentinel publishes its status (django-q2's ``Stat``) to the shared cache every
few seconds with a 3-second expiry, so what the cache holds is the clusters alive right now.
/health is the web server's liveness probe: a missing worker never makes it fail (that would
restart web processes that are fine), it changes ``status`` and says what to do:

- ``healthy``: at least one cluster reports Idle or Working;
- ``starting``: none does yet, within ``FLOW_HEALTH_STARTING_SECONDS`` (default 60) of this web
  process starting, the time a cluster started beside it takes to report;
- ``degraded``: still none after that. Executions wait in the queue until a cluster runs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django_q.conf import Conf
from django_q.humanhash import humanize
from django_q.status import Stat

logger = logging.getLogger("flows.api")

# When this web process loaded the API (its URLs): the grace period for "starting" counts
# from here.
STARTED = time.monotonic()

HOW_TO_START = (
    "executions wait in the queue until one runs; start one with `python manage.py qcluster`"
)


def cluster_document(stat: Any) -> dict[str, Any]:
    """One cluster's status, as /health lists it."""
    return {
        "id": str(stat.cluster_id),
        "name": humanize(stat.cluster_id.hex),  # as django-q2's log and qinfo name it
        "host": stat.host,
        "status": str(stat.status),
        "processes": len(stat.workers),
        "started_at": stat.tob.isoformat() if stat.tob else None,
        "last_seen": stat.timestamp.isoformat(),
    }


def workers_report() -> dict[str, Any]:
    """``status``, ``workers`` (processes of the live clusters), ``clusters`` and ``message``."""
    problem = ""
    try:
        stats = sorted(Stat.get_all(), key=lambda s: (s.host, str(s.cluster_id)))
    except Exception as exc:  # the cache is optional for health: report it, don't fail
        logger.warning("health: cannot read cluster status: %s", exc)
        stats, problem = [], f"cannot read the worker clusters' status from the cache ({exc}); "
    alive = {str(Conf.IDLE), str(Conf.WORKING)}
    live = [s for s in stats if str(s.status) in alive]
    workers = sum(len(s.workers) for s in live)
    clusters = [cluster_document(s) for s in stats]
    if live:
        status = "healthy"
        message = f"{_count(workers, 'worker process', 'es')} in {_count(len(live), 'cluster')}"
    elif time.monotonic() - STARTED < settings.FLOW_HEALTH_STARTING_SECONDS:
        status = "starting"
        message = f"{problem}no worker cluster has reported yet; {HOW_TO_START}"
    else:
        status = "degraded"
        message = f"{problem}no worker cluster is reporting; {HOW_TO_START}"
    return {"status": status, "workers": workers, "clusters": clusters, "message": message}


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"
