"""Run a django-q2 cluster behind a signal shield: ``manage.py runworker``.

Process managers such as honcho (``make run``), supervisor's ``stopasgroup`` and ``tini -g``
send SIGTERM to the whole process group. qcluster's main process hangs when its own workers
are signalled alongside it (DJANGO-Q2.md, django-q2 #346), so this command starts qcluster in
a session of its own and hands SIGTERM/SIGINT to the qcluster main process only: it then
finishes the steps in flight and exits cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run `manage.py qcluster`, passing stop signals to its main process only."

    def handle(self, *args: Any, **options: Any) -> None:
        manage = str(settings.BASE_DIR / "manage.py")
        # Our own interpreter and manage.py, no user input: nothing to inject.
        cluster = subprocess.Popen(  # noqa: S603
            [sys.executable, manage, "qcluster"], start_new_session=True
        )

        def forward(signum: int, _frame: Any) -> None:
            if cluster.poll() is None:
                cluster.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        raise SystemExit(cluster.wait())
