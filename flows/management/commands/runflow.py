"""Run a flow document inline, printing each step: ``manage.py runflow FILE.json``
(``--with OTHER.json`` stores the flows it calls first)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django_q.conf import Conf

from flows import services
from flows.models import Execution, ExecutionStatus
from flows.waiting import CHILDREN, SIGNAL, Waiting


class Command(BaseCommand):
    help = (
        "Validate a flow document, store it (after the --with documents, such as the flows "
        "it calls), and run one execution in this process. "
        "Exit 0 when the execution COMPLETED, 1 when it did not, 2 when the file is invalid. "
        "Prints the steps and the final status; -v 2 also shows the engine's log lines."
    )
    # The error for a sub-flow task whose flow is not stored (flows.definition.subflows): the
    # same command can store it.
    NOT_STORED = "parameters.flow_id"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Path to a flow document (JSON), bare or as {'flow': ...}")
        parser.add_argument(
            "--input", default=None, help="JSON object given to the execution as input"
        )
        parser.add_argument(
            "--with",
            dest="with_files",
            action="append",
            default=[],
            metavar="OTHER",
            help="a flow document to store before FILE, such as the flow a subflow task of "
            "FILE calls (repeatable; stored in the order given)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The table is the output; the engine's and django-q2's log lines (stderr) would bury
        # it, so they show only when asked for with -v 2 or more.
        with contextlib.nullcontext() if options["verbosity"] >= 2 else _logging_off():
            self._run(options)

    def _run(self, options: dict[str, Any]) -> None:
        path = options["file"]
        others = [(other, self._read(other)) for other in options["with_files"]]
        document = self._read(path)
        input_value = None
        if options["input"] is not None:
            try:
                input_value = json.loads(options["input"])
            except ValueError as exc:
                self._invalid(f"--input is not valid JSON: {exc}")
            if not isinstance(input_value, dict):
                self._invalid('--input must be a JSON object, e.g. --input \'{"key": "value"}\'')
        stored, where = [], path
        try:
            # All the files or none: an invalid one leaves nothing stored.
            with transaction.atomic():
                for other, other_document in others:
                    where = other
                    stored.append((other, services.flow_create(document=other_document)))
                where = path
                version = services.flow_create(document=document)
                # Checked before the execution is stored (execution_start checks it again):
                # a refused input leaves neither the execution nor the flow behind.
                where = "--input"
                input_value = services.flow_input_check(flow_version=version, input=input_value)
                execution = services.execution_create(flow_version=version, input=input_value)
        except services.ServiceError as exc:
            what = "invalid flow"
            if where == "--input":
                matched = isinstance(exc, services.InvalidInput)
                what = "does not match the flow's input_schema" if matched else "refused"
            self.stderr.write(self.style.ERROR(f"{where}: {what}"))
            errors = exc.errors or [{"field": "", "message": exc.message}]
            for error in errors:
                whole = "(input)" if where == "--input" else "(document)"
                self.stderr.write(f"  {error['field'] or whole}: {error['message']}")
            if where == path and any(e["field"].endswith(self.NOT_STORED) for e in errors):
                self.stderr.write(
                    "  (store the flow a subflow task calls in the same command: --with <its file>)"
                )
            raise SystemExit(2) from None
        except RecursionError:
            self._invalid(f"{where}: invalid flow: nested too deeply; use a flatter document")

        for other, other_version in stored:
            self.stdout.write(
                f"stored flow {other_version.flow_id} v{other_version.version} from {other}"
            )
        self.stdout.write(f"flow {version.flow_id} v{version.version}, execution {execution.id}")
        # django-q2's sync mode: the job execution_start enqueues runs here, in this process,
        # through the same engine a worker uses. Conf is process-wide, so the previous mode is
        # put back for callers in a long-lived process (call_command from tests or a shell).
        was_sync = Conf.SYNC
        Conf.SYNC = True
        try:
            services.execution_start(execution_id=execution.id)
            # Steps a job left behind (a retry's delay, the step budget) run here too. A wait
            # for a signal ends the run: no signal reaches this process while it sleeps.
            services.execution_run_inline(execution_id=execution.id, signal_timeouts=False)
        finally:
            Conf.SYNC = was_sync
        execution = Execution.objects.get(pk=execution.id)
        for step in execution.steps.order_by("seq"):
            duration = f"{step.duration:.3f}s" if step.duration is not None else "-"
            line = f"  {step.seq:>3}  {step.task_name:<24} {step.status:<9} {duration:>9}"
            if step.error:
                line += f"  {step.error}"
            elif step.status == "PENDING" and (waiting := Waiting.from_json(step.waiting)):
                line += f"  {_waiting(waiting, execution.id)}"
            self.stdout.write(line)
        style = (
            self.style.SUCCESS
            if execution.status == ExecutionStatus.COMPLETED
            else self.style.ERROR
        )
        self.stdout.write(
            style(f"{execution.status}" + (f": {execution.error}" if execution.error else ""))
        )
        if execution.status != ExecutionStatus.COMPLETED:
            raise SystemExit(1)

    def _read(self, path: str) -> Any:
        """The JSON document in ``path``; exit 2 saying why when there is none."""
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except OSError as exc:
            self._invalid(f"cannot read {path}: {exc.strerror}")
        except ValueError as exc:
            self._invalid(f"{path} is not valid JSON: {exc}")
        except RecursionError:
            self._invalid(f"{path} is nested too deeply to read; use a flatter document")

    def _invalid(self, message: str) -> NoReturn:
        self.stderr.write(self.style.ERROR(message))
        raise SystemExit(2)


def _waiting(waiting: Waiting, execution_id: Any) -> str:
    """What a waiting step waits for, and how to end the wait, in a few words."""
    if waiting.kind == SIGNAL:
        return (
            f"waits for signal '{waiting.name}': POST "
            f"/api/executions/{execution_id}/signal/, or Approve on its page"
        )
    if waiting.kind == CHILDREN:
        return "waits for its children"
    return f"waits until {waiting.until if 'until' in waiting.keys else 'its time'}"


@contextlib.contextmanager
def _logging_off() -> Iterator[None]:
    """Silence every logger for the command's run, then restore the previous state (call_command
    runs in long-lived processes too). Task log lines are still stored with the execution:
    the engine collects them itself, not through logging handlers."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)
