"""``manage.py purge_executions --older-than 30d``: delete old finished executions."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows import selectors, services

_AGE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta; ValueError saying what is accepted."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(
            f"{text!r} is not an age: use a whole number followed by d (days), h (hours) "
            "or m (minutes), e.g. 30d, 12h, 90m"
        )
    amount = int(match[1])
    if amount == 0:
        raise ValueError(f"{text!r} would purge every finished execution: use more than 0")
    return timedelta(**{_UNITS[match[2]]: amount})


class Command(BaseCommand):
    help = (
        "Delete finished executions (with their steps and log lines) that ended, or were "
        "created if they never ended, longer ago than --older-than. Executions that are "
        "QUEUED, RUNNING or PAUSED are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            help="age such as 30d, 12h or 90m (days, hours, minutes)",
        )
        parser.add_argument(
            "--status",
            action="append",
            dest="statuses",
            metavar="STATUS",
            help=(
                "only executions in this status; repeat for several. Default: COMPLETED, "
                "FAILED and CANCELLED. CREATED (never started) only when named."
            ),
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="executions deleted per transaction (default 1000)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            older_than = parse_age(options["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        statuses = [s.strip().upper() for s in options["statuses"] or []] or None
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            if options["dry_run"]:
                self._dry_run(older_than=older_than, statuses=statuses)
                return
            totals = [0, 0, 0]

            def progress(executions: int, steps: int, events: int) -> None:
                for i, n in enumerate((executions, steps, events)):
                    totals[i] += n
                if options["verbosity"] >= 2:
                    self.stdout.write(
                        f"  batch: {executions} executions, {steps} steps, {events} log lines"
                    )

            deleted = services.executions_purge(
                older_than=older_than,
                statuses=statuses,
                batch_size=options["batch_size"],
                on_batch=progress,
            )
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"Deleted {deleted} executions, {totals[1]} steps and {totals[2]} log lines "
            f"older than {options['older_than']}."
        )

    def _dry_run(self, *, older_than: Any, statuses: list[str] | None) -> None:
        from flows.models import ExecutionEvent, TaskRun

        candidates = selectors.execution_list_purgeable(older_than=older_than, statuses=statuses)
        executions = candidates.count()
        steps = TaskRun.objects.filter(execution__in=candidates.values("pk")).count()
        events = ExecutionEvent.objects.filter(execution__in=candidates.values("pk")).count()
        self.stdout.write(
            f"Dry run: would delete {executions} executions, {steps} steps and {events} log "
            f"lines older than {older_than}; nothing was deleted."
        )
