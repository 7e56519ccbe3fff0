"""``manage.py worker_health``: exit 0 when a django-q2 cluster on this host is alive.

For container healthchecks (docker-compose.yml). A cluster publishes its status (``Stat``)
to the shared cache every few seconds with a 3-second expiry, tagged with its host name; a
container has a host name of its own, so "a cluster of this host is Idle or Working" means
"the qcluster in this container is alive". Unlike ``qinfo`` (exit 0 whatever it finds) or
``pgrep`` (a process that exists may still be wedged), this checks what the cluster itself
last reported.
"""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_q.conf import Conf
from django_q.status import Stat


class Command(BaseCommand):
    help = "Exit 0 when a django-q2 cluster of this host reported Idle or Working, else 1."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host", default=None, help="host name to look for (default: this host's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host = options["host"] or socket.gethostname()
        try:
            clusters = Stat.get_all()
        except Exception as exc:  # cache down: the worker cannot be seen, so it is not healthy
            raise CommandError(f"cannot read cluster status from the cache: {exc}") from None
        alive = {str(Conf.IDLE), str(Conf.WORKING)}
        mine = [c for c in clusters if getattr(c, "host", None) == host]
        healthy = [c for c in mine if str(getattr(c, "status", "")) in alive]
        if not healthy:
            seen = ", ".join(f"{c.cluster_id} {c.status}" for c in mine) or "none"
            raise CommandError(f"no live django-q2 cluster on host {host} (seen: {seen})")
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"{len(healthy)} live cluster(s) on {host}: "
                + ", ".join(f"{c.cluster_id} {c.status}" for c in healthy)
            )
