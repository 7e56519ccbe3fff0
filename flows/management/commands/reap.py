from typing import Any

from django.core.management.base import BaseCommand

from flows import engine


class Command(BaseCommand):
    help = (
        "Re-run steps whose worker died and wake steps nobody picked up "
        "(qcluster runs this every minute)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = engine.reap()
        self.stdout.write(
            f"lost steps re-queued: {counts['lost']}, pending steps woken: {counts['woken']}"
        )
