"""``manage.py limit``: define, change, delete or list named concurrency limits, as
``/api/limits/`` does (both call flows/services/limits.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows import services
from flows.models import ConcurrencyLimit


def _rate(text: str) -> dict[str, Any]:
    """``20/1`` -> ``{"count": 20, "per_seconds": 1.0}`` (the service checks the numbers)."""
    count, sep, per = text.partition("/")
    try:
        return {"count": int(count), "per_seconds": float(per) if sep else 1.0}
    except ValueError:
        raise CommandError(f"--rate {text!r}: write COUNT/SECONDS, e.g. 20/1") from None


class Command(BaseCommand):
    help = (
        "Define or change a named concurrency limit (NAME --max-in-flight N [--rate COUNT/"
        "SECONDS] [--key CEL] [--fairness fifo|round_robin]), delete one (NAME --delete), or "
        "list them with what is in use and waiting (no NAME)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?")
        parser.add_argument("--max-in-flight", type=int, dest="max_in_flight")
        parser.add_argument("--rate", type=_rate, help="COUNT/SECONDS, e.g. 20/1")
        parser.add_argument("--no-rate", action="store_true", help="remove the rate")
        parser.add_argument("--key", help="CEL over the step's parameters ('' removes it)")
        parser.add_argument("--fairness", choices=["fifo", "round_robin"])
        parser.add_argument("--description")
        parser.add_argument("--delete", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        if not name:
            self._list()
            return
        try:
            if options["delete"]:
                services.limit_delete(name=name)
                self.stdout.write(f"limit {name} deleted")
                return
            data: dict[str, Any] = {
                field: options[field]
                for field in ("max_in_flight", "key", "fairness", "description")
                if options[field] is not None
            }
            if options["rate"] is not None:
                data["rate"] = options["rate"]
            if options["no_rate"]:
                data["rate"] = None
            if ConcurrencyLimit.objects.filter(name=name).exists():
                limit = services.limit_update(name=name, data=data)
                verb = "changed"
            else:
                limit = services.limit_create(data={"name": name, **data})
                verb = "defined"
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        rate = f", {limit.rate_count} per {limit.rate_per_seconds:g} s" if limit.rate_count else ""
        self.stdout.write(f"limit {limit.name} {verb}: {limit.max_in_flight} at once{rate}")

    def _list(self) -> None:
        usage = services.limit_usage()
        for limit in ConcurrencyLimit.objects.all():
            got = usage.get(limit.name, {"in_use": {}, "waiting": {}})
            self.stdout.write(
                f"{limit.name}: {sum(got['in_use'].values())} of {limit.max_in_flight} in use, "
                f"{sum(got['waiting'].values())} waiting"
            )
