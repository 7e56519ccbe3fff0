"""``manage.py backfill FLOW --start ... --end ...``: run a flow's cron slots over a range
(``services.backfill_create``, as ``POST /api/flows/{id}/backfill/``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from flows import services


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date and time; without a zone, in the server's (TIME_ZONE)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date and time: write it as 2026-11-01 or 2026-11-01T06:00"
        ) from None
    return timezone.make_aware(value) if timezone.is_naive(value) else value


class Command(BaseCommand):
    help = (
        "Run the slots of a flow's cron schedule between --start and --end (both included) "
        "with the flow's current version: slots that never ran run, slots that ran are "
        "skipped or rerun as --reprocess says. --dry-run prints the plan and starts nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("flow", help="the flow's id (it needs a schedule: its cron)")
        parser.add_argument("--start", required=True, help="first slot time, e.g. 2026-11-01")
        parser.add_argument("--end", required=True, help="last slot time, e.g. 2026-11-02T00:00")
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument(
            "--max-active", type=int, default=1, help="runs at once (default 1, at most 100)"
        )
        parser.add_argument(
            "--reprocess",
            choices=["none", "failed", "all"],
            default="none",
            help="slots that ran: skip them (none), rerun the failed ones, or rerun all",
        )
        parser.add_argument(
            "--input", help="the runs' input as a JSON object (default: the schedule's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = parse_time(options["start"]), parse_time(options["end"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        run_input = None
        if options["input"] is not None:
            try:
                run_input = json.loads(options["input"])
            except ValueError as exc:
                raise CommandError(f"--input is not JSON: {exc}") from None
        try:
            made, plans = services.backfill_create(
                flow_id=options["flow"],
                start=start,
                end=end,
                dry_run=options["dry_run"],
                max_active=options["max_active"],
                reprocess=options["reprocess"],
                input=run_input,
            )
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        for plan in plans:
            shown = f"  {plan.execution}" if plan.execution else ""
            self.stdout.write(f"{plan.slot.isoformat()}  {plan.action:<5}  {plan.reason}{shown}")
        counts = {a: sum(p.action == a for p in plans) for a in ("run", "rerun", "skip")}
        summary = ", ".join(f"{n} {a}" for a, n in counts.items())
        if made is None:
            self.stdout.write(f"dry run: {len(plans)} slot(s): {summary}; nothing started")
        else:
            self.stdout.write(f"backfill {made.id}: {len(plans)} slot(s): {summary}")
