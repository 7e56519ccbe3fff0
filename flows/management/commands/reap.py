from typing import Any

from django.core.management.base import BaseCommand

from flows import services


class Command(BaseCommand):
    help = (
        "Re-run steps whose worker died, end executions past their timeout and wake steps "
        "nobody picked up (qcluster runs this every minute)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = services.executions_reap()
        self.stdout.write(
            f"lost steps re-queued: {counts['lost']}, executions past their timeout ended: "
            f"{counts['timed_out']}, pending steps woken: {counts['woken']}"
        )
