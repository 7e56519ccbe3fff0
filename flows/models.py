"""Flows, their versions, executions, the steps they ran and their log lines.

The engine owns the state columns of Execution and TaskRun; everything else writes through
``flows.services``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Count, F, OuterRef, Q, Subquery, Window
from django.db.models.functions import RowNumber, TruncDay, TruncHour
from django.utils import timezone

from flows.definition.fields import LONE_SURROGATE


class StoredJSONDecoder(json.JSONDecoder):
    """The JSON columns' decoder: a lone surrogate (a ``\\ud800`` escape that SQLite kept from
    before such text was refused; PostgreSQL never stores one) reads as U+FFFD, as undecodable
    text does anywhere, so that the row still renders on every page and can be deleted."""

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        value = super().decode(s, *args, **kwargs)
        if "\\ud" in s or "\\uD" in s:  # an escaped surrogate, maybe half a valid pair
            value = _replace_lone_surrogates(value)
        return value


class StoredJSONField(models.JSONField):
    """A JSONField read with ``StoredJSONDecoder``. The decoder changes nothing in the
    database, so it is left out of migrations (which would rebuild SQLite tables for it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("decoder", StoredJSONDecoder)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, _, args, kwargs = super().deconstruct()
        kwargs.pop("decoder", None)
        return name, "django.db.models.JSONField", args, kwargs


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    return value


class FlowQuerySet(models.QuerySet["Flow"]):
    def search(self, text: str) -> FlowQuerySet:
        """Flows whose id or name contains ``text`` (case-insensitive); all when blank."""
        text = (text or "").strip()
        return self.filter(Q(id__icontains=text) | Q(name__icontains=text)) if text else self

    def with_last_run(self) -> FlowQuerySet:
        """Annotate ``last_run_id``, ``last_run_status`` and ``last_run_at`` (None if never run).

        Three correlated subqueries on the index of a flow's runs (top-level executions): one
        query for the list however many flows it shows.
        """
        # A run, not a map item or branch that ended after it.
        latest = Execution.objects.filter(flow=OuterRef("pk"), parent_step__isnull=True).order_by(
            "-created_at"
        )
        return self.annotate(
            last_run_id=Subquery(latest.values("id")[:1]),
            last_run_status=Subquery(latest.values("status")[:1]),
            last_run_at=Subquery(latest.values("created_at")[:1]),
        )


class Flow(models.Model):
    """A named flow; its definition is the latest of its versions."""

    id = models.SlugField(primary_key=True, max_length=100)
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1, help_text="Current (latest) version.")
    definition = StoredJSONField(help_text="The current version's flow document.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FlowQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["-updated_at"], name="flow_updated_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class FlowVersion(models.Model):
    """An immutable snapshot of a flow document; executions pin one."""

    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    definition = StoredJSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["flow_id", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["flow", "version"], name="flowversion_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.flow_id} v{self.version}"


class ExecutionStatus(models.TextChoices):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ExecutionTrigger(models.TextChoices):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    RERUN = "rerun"
    PARENT = "parent"  # a parallel branch, a map item or a sub-flow of another execution
    FLOW = "flow"  # another flow's end (its document's on_flow_end); see triggered_by
    BACKFILL = "backfill"  # a slot of the flow's cron, run by a backfill (Backfill)
    # Started by another execution's failure (its flow's ``on_failure``): one that fails in
    # turn starts no error handler of its own (flows/services/alerts.py, the chain guard).
    ERROR_HANDLER = "error_handler"
    WEBHOOK = "webhook"  # a delivery to one of the flow's webhooks


ACTIVE_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
TERMINAL_STATUSES = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


# An execution's place in a tree of children, as the API shows it (with its parent step's
# execution, seq and task name, joined).
TREE_FIELDS = (
    "parent_step",
    "root",
    "branch",
    "item_index",
    "parent_step__execution",
    "parent_step__seq",
    "parent_step__task_name",
)

# The columns of an execution the API's list shows (with the flow's name, the version number
# and the starting user's name). Not its input: a row shows the input's size (JSONTextBytes),
# and a link to it, so a page of rows stays small whatever the inputs hold.
API_LIST_FIELDS = (
    "id",
    "flow",
    "flow_version",
    "status",
    "trigger",
    "current_task",
    "error",
    "steps_taken",
    "cancel_requested",
    "pause_requested",
    "redrive_count",
    "deadline_at",
    "rerun_of",
    "triggered_by",
    "scheduled_for",
    "backfill",
    "created_by",
    "created_at",
    "queued_at",
    "started_at",
    "ended_at",
)


class JSONTextBytes(models.Func):
    """The size in bytes of a JSON column's text as the database stores it, computed there:
    a list shows how big a value is without loading it."""

    output_field = models.BigIntegerField()
    template = "LENGTH(%(expressions)s)"

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # JSON is stored as TEXT; LENGTH of TEXT counts characters, of a BLOB bytes.
        return self.as_sql(
            compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))", **extra
        )

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="OCTET_LENGTH((%(expressions)s)::text)", **extra
        )


class ExecutionQuerySet(models.QuerySet["Execution"]):
    def with_flow(self) -> ExecutionQuerySet:
        """Executions with their flow and pinned version, for lists and status documents."""
        return self.select_related("flow", "flow_version")

    def active(self) -> ExecutionQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def for_list(self) -> ExecutionQuerySet:
        """Newest first, with flow and version, without the (possibly large) input document."""
        return self.with_flow().defer("input").order_by("-created_at")

    def matching(
        self,
        *,
        status: str = "",
        flow_id: str = "",
        created_from: Any = None,
        created_until: Any = None,
    ) -> ExecutionQuerySet:
        """Filter by status, flow and an inclusive range of creation times; blank means any."""
        qs = self
        if status:
            qs = qs.filter(status=status)
        if flow_id:
            qs = qs.filter(flow_id=flow_id)
        if created_from is not None:
            qs = qs.filter(created_at__gte=created_from)
        if created_until is not None:
            qs = qs.filter(created_at__lte=created_until)
        return qs

    def status_counts(self, since: Any) -> dict[str, int]:
        """How many top-level executions were created since ``since``, per status (one query).

        Children (parallel branches, map items, sub-flows) are steps of their parent, not runs
        of their own: a 1,000-item map is one execution here, as in the executions list.
        """
        rows = (
            self.top_level()
            .filter(created_at__gte=since)
            .order_by()
            .values_list("status")
            .annotate(n=Count("id"))
        )
        return dict(rows)

    def failing_flows(self, since: Any, limit: int = 5) -> list[dict[str, Any]]:
        """The flows with the most FAILED top-level executions since ``since``, most first.

        Each item: ``flow_id``, ``flow__name``, ``failed`` and ``total`` (all top-level
        executions of that flow in the window), so the page can show a failure rate. Children
        count as steps of their parent (see ``status_counts``): a map whose items fail counts
        once, when the map's execution fails.
        """
        rows = (
            self.top_level()
            .filter(created_at__gte=since)
            .order_by()
            .values("flow_id", "flow__name")
            .annotate(
                failed=Count("id", filter=Q(status=ExecutionStatus.FAILED)),
                total=Count("id"),
            )
            .filter(failed__gt=0)
            .order_by("-failed", "flow_id")
        )
        return list(rows[:limit])

    def for_api_list(self) -> ExecutionQuerySet:
        """Executions as the API lists them: one query per page, whatever the row count.

        Joins the flow, the pinned version and the user who started it, loading only the
        columns the list shows (decoding flow documents and user rows cost more than the rows).
        """
        return self._for_api()

    def _for_api(self, *fields: str) -> ExecutionQuerySet:
        return self.select_related("flow", "flow_version", "created_by", "parent_step").only(
            *API_LIST_FIELDS,
            *TREE_FIELDS,
            "flow__name",
            "flow_version__version",
            "created_by__username",
            *fields,
        )

    def for_api_detail(self) -> ExecutionQuerySet:
        """One execution as the API shows it: the list's joins, its input and its size, plus
        its steps in order, each with its fan-out (a control step's children counts): two
        queries whatever the steps."""
        steps = models.Prefetch(
            "steps", queryset=TaskRun.objects.order_by("seq").select_related("fanout")
        )
        return (
            self._for_api("input")
            .annotate(input_size=JSONTextBytes("input"))
            .prefetch_related(steps)
        )

    def input_sizes(self, ids: list[Any]) -> dict[Any, int]:
        """Each execution's input size (JSONTextBytes), for a page of list rows: one query by
        primary key. Not an annotation of the list's own query: a database that sorts the
        rows before its LIMIT computes the select list for every row it sorts, and PostgreSQL
        would then read every matching input whole (0.8 s for 400 inputs of 600 KB)."""
        rows = self.filter(pk__in=ids).annotate(size=JSONTextBytes("input"))
        return dict(rows.values_list("pk", "size"))

    def top_level(self) -> ExecutionQuerySet:
        """Executions that are no other's child (lists show these unless asked for children)."""
        return self.filter(parent_step__isnull=True)

    def counts_by_period(self, unit: str, since: Any) -> list[tuple[Any, str, int]]:
        """``(period start, status, count)`` of top-level executions created since ``since``,
        grouped in SQL by the hour or the day (``unit``) they were created, in UTC: one query
        whose answer has at most one row per period and status, however many executions."""
        trunc = {"hour": TruncHour, "day": TruncDay}[unit]
        rows = (
            self.top_level()
            .filter(created_at__gte=since)
            .annotate(period=trunc("created_at", tzinfo=UTC))
            .order_by()
            .values_list("period", "status")
            .annotate(n=Count("id"))
        )
        return list(rows)

    def durations_sample(
        self, flow_ids: list[str], since: Any, limit: int
    ) -> dict[str, list[tuple[Any, float]]]:
        """For each flow, ``(created_at, seconds)`` of its latest ``limit`` top-level
        executions created since ``since`` that ran and ended: a bounded sample, in one query
        for all the flows, that the pages turn into percentiles.

        Where the database takes LIMIT inside a UNION (PostgreSQL), each flow's part reads its
        latest rows off the (flow, created_at) index and stops at ``limit``; elsewhere (SQLite)
        the rows are numbered per flow with a window function."""
        ended = self.top_level().filter(
            created_at__gte=since,
            started_at__isnull=False,
            ended_at__isnull=False,
            status__in=TERMINAL_STATUSES,
        )
        fields = ("flow_id", "created_at", "started_at", "ended_at")
        found: dict[str, list[tuple[Any, float]]] = {flow_id: [] for flow_id in flow_ids}
        if not flow_ids:
            return found
        if connection.features.supports_slicing_ordering_in_compound:
            parts = [
                ended.filter(flow_id=flow_id).order_by("-created_at").values_list(*fields)[:limit]
                for flow_id in flow_ids
            ]
            rows: Any = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
        else:
            rows = (
                ended.filter(flow_id__in=flow_ids)
                .annotate(
                    rank=Window(
                        RowNumber(), partition_by=F("flow_id"), order_by=F("created_at").desc()
                    )
                )
                .filter(rank__lte=limit)
                .order_by()
                .values_list(*fields)
            )
        for flow_id, created, started, ended_at in rows:
            found[flow_id].append((created, (ended_at - started).total_seconds()))
        return found

    def busiest_flows(self, since: Any, limit: int) -> list[str]:
        """The ids of the flows with the most top-level executions since ``since``."""
        rows = (
            self.top_level()
            .filter(created_at__gte=since)
            .order_by()
            .values("flow_id")
            .annotate(n=Count("id"))
            .order_by("-n", "flow_id")
            .values_list("flow_id", flat=True)
        )
        return list(rows[:limit])


class Execution(models.Model):
    """One run of one version of a flow."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    flow = models.ForeignKey(
        Flow,
        on_delete=models.CASCADE,
        related_name="executions",
        # exec_flow_created_idx (flow, -created_at) serves it: every index here is written
        # again whenever an execution changes status, twice in each execution's life.
        db_index=False,
    )
    flow_version = models.ForeignKey(
        FlowVersion, on_delete=models.CASCADE, related_name="executions"
    )
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.CREATED
    )
    current_task = models.CharField(max_length=100, blank=True)
    input = StoredJSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    steps_taken = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    pause_requested = models.BooleanField(default=False)
    deadline_at = models.DateTimeField(
        null=True, blank=True, help_text="The flow's timeout_seconds, counted from the start."
    )
    trigger = models.CharField(
        max_length=16, choices=ExecutionTrigger.choices, default=ExecutionTrigger.MANUAL
    )
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns"
    )
    redrive_count = models.PositiveIntegerField(default=0)
    # The upstream execution whose end started this one (trigger "flow"): a chain of flow
    # triggers is followed back through it.
    triggered_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="triggered",
        db_index=False,  # the execution_one_per_trigger unique index serves it
    )
    # The cron slot a scheduled or backfilled run is for, and which run of it this is (0 the
    # first; a backfill's reprocess makes the next): unique per flow (execution_one_per_slot),
    # so two schedulers, a redelivered job or two backfills never run one slot twice, and
    # deleting a run (a purge) changes no other row's place.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    slot_attempt = models.PositiveSmallIntegerField(default=0, db_default=0)
    backfill = models.ForeignKey(
        "Backfill",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="executions",
        db_index=False,  # the (backfill, status) index serves it
    )
    idempotency_key = models.CharField(max_length=200, blank=True)
    # SHA-256 of the request body the key came with: a repeat with another body is refused.
    # db_default: a process still running the code before this column can insert executions.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="", db_default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # A child execution (a parallel branch, a map item, a sub-flow) belongs to the step of
    # its parent that started it; the parent step waits until its children have ended.
    parent_step = models.ForeignKey(
        "TaskRun",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="children",
        db_index=False,  # the (parent_step, item_index) unique index serves it
    )
    # Where in its flow version's document a branch or map item's tasks are: control task
    # names alternating with branch names ("" for a map's iterator). Empty: the whole flow.
    scope = StoredJSONField(default=list, blank=True)
    # The top execution of a tree of children (null for a top execution itself): inline runs,
    # lists and purges take a whole tree by it.
    root = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="descendants"
    )
    branch = models.CharField(max_length=50, blank=True)
    # Position among its parent step's children: the branch's place, or the map item's.
    item_index = models.PositiveIntegerField(null=True, blank=True)
    item = StoredJSONField(null=True, blank=True, help_text="A map item: ${item}.")
    result = StoredJSONField(
        null=True,
        blank=True,
        help_text="A child's output: its last step's result.",
    )

    # A flow with max_concurrent_executions: the execution's key (its concurrency_key's value,
    # "" without one), and whether it holds one of the key's places (False: queued for one).
    # None for every other execution, which then costs the admission nothing.
    concurrency_key = models.CharField(  # noqa: DJ001 (None: no limit; "": the one key)
        max_length=200, null=True, blank=True, default=None
    )
    concurrency_held = models.BooleanField(default=False)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # Roles (groups made in migrations 0005, 0006 and 0010) are built from these and the
        # model defaults.
        permissions = [
            ("start_execution", "Can start executions and re-run them"),
            ("cancel_execution", "Can cancel executions"),
            ("signal_execution", "Can approve, reject or signal waiting steps"),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="exec_status_created_idx"),
            models.Index(fields=["flow", "-created_at"], name="exec_flow_created_idx"),
            # A flow's runs, without the children of its maps (its last run, on the flows list).
            models.Index(
                fields=["flow", "-created_at"],
                name="exec_flow_run_created_idx",
                condition=models.Q(parent_step__isnull=True),
            ),
            models.Index(fields=["-created_at"], name="exec_created_idx"),
            # What a backfill waits on and starts next.
            models.Index(
                fields=["backfill", "status"],
                condition=Q(backfill__isnull=False),
                name="exec_backfill_status_idx",
            ),
            # The places of a flow's key in use, and its queue (engine/admission.py); holds
            # only executions of flows with max_concurrent_executions.
            models.Index(
                fields=["flow", "concurrency_key", "concurrency_held", "status"],
                name="exec_concurrency_idx",
                condition=Q(concurrency_key__isnull=False),
            ),
        ]
        constraints = [
            # A repeated start with the same Idempotency-Key returns the first execution.
            models.UniqueConstraint(
                fields=["flow", "created_by", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="execution_idempotency_key",
            ),
            # One child per place: a parent step that starts its children twice (a redelivered
            # job) cannot make two of one item; it also orders them for the result.
            models.UniqueConstraint(
                fields=["parent_step", "item_index"],
                condition=Q(parent_step__isnull=False),
                name="execution_one_child_per_item",
            ),
            # An upstream end starts each downstream flow once, even if its outbox row were
            # handled twice.
            models.UniqueConstraint(
                fields=["triggered_by", "flow"],
                condition=Q(triggered_by__isnull=False),
                name="execution_one_per_trigger",
            ),
            # Also the index of a flow's scheduled runs (the overlap policy, a slot's runs).
            models.UniqueConstraint(
                fields=["flow", "scheduled_for", "slot_attempt"],
                condition=Q(scheduled_for__isnull=False),
                name="execution_one_per_slot",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.flow_id} {self.id} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class TaskRunStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"
    LOST = "LOST"  # the worker holding it died; the step was run again as a new attempt


class TaskRun(models.Model):
    """One step of an execution: one attempt of one task."""

    # No index of its own: the unique (execution, seq) index below serves every look-up by
    # execution, and one index fewer is one page fewer written per step.
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    seq = models.PositiveIntegerField(help_text="Position of this step in the execution, from 1.")
    task_name = models.CharField(max_length=100)
    task_type = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(
        max_length=16, choices=TaskRunStatus.choices, default=TaskRunStatus.PENDING
    )
    parameters = StoredJSONField(default=dict, blank=True)
    result = StoredJSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds the task ran.")
    route = models.CharField(
        max_length=300, blank=True, help_text="Where the flow went after this step, and why."
    )
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The named limits (ConcurrencyLimit) the step takes a slot of, comma-separated; "" (most
    # steps) costs the claim and the record nothing (flows/engine/limits.py).
    limits = models.CharField(max_length=500, blank=True, default="")
    woken_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker was last asked to pick this step up."
    )
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="A retry waits in the database until this time."
    )
    waiting = StoredJSONField(
        null=True,
        blank=True,
        help_text="What the open step waits for in the database: a time, a signal, children.",
    )

    class Meta:
        ordering = ["execution_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "seq"], name="taskrun_unique_seq"),
            # The engine's core invariant: an execution has at most one step in flight.
            models.UniqueConstraint(
                fields=["execution"],
                condition=Q(status__in=["PENDING", "RUNNING"]),
                name="taskrun_one_open_step",
            ),
        ]
        indexes = [
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="RUNNING"),
                name="taskrun_running_lease_idx",
            ),
            models.Index(
                fields=["woken_at"], condition=Q(status="PENDING"), name="taskrun_pending_idx"
            ),
            models.Index(
                fields=["not_before"], condition=Q(status="PENDING"), name="taskrun_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.execution_id} #{self.seq} {self.task_name} {self.status}"

    @property
    def message(self) -> str:
        if isinstance(self.result, dict) and isinstance(self.result.get("message"), str):
            return self.result["message"]
        if self.status == TaskRunStatus.SUCCESS:
            return f"Task {self.task_name} completed successfully"
        if self.status == TaskRunStatus.FAILURE:
            return f"Task {self.task_name} failed"
        return f"Task {self.task_name} is {self.status.lower()}"

    def seed_result(self) -> dict[str, Any]:
        """This step in the seed's ``task_results`` shape."""
        return {
            "task_name": self.task_name,
            "status": self.status,
            "message": self.message,
            "data": self.result,
            "execution_time": self.duration,
            "timestamp": self.ended_at.isoformat() if self.ended_at else None,
            "error": self.error or None,
        }


class FanOut(models.Model):
    """The children of one parallel, map or sub-flow step, counted as they end.

    Each child's final transaction adds itself to ``done`` (and ``failed``); a map starts its
    next item there too, up to ``max_concurrency`` at once. When the last one ends (or fail
    fast applies) the parent step is made due and its execution woken: the parent never
    polls and never loads all its children.

    A redriven step has a FanOut of its own: the counts of that attempt, those it kept from
    the earlier one counted as started and done from the start (``flows.engine.redrive``).
    """

    # Keyed by its step: a child finds its parent's counts by its own parent_step_id.
    step = models.OneToOneField(
        TaskRun, on_delete=models.CASCADE, related_name="fanout", primary_key=True
    )
    kind = models.CharField(max_length=16)  # parallel, map or subflow
    total = models.PositiveIntegerField()
    started = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)
    fail_fast = models.BooleanField(default=True)
    # Failures tolerated before the step fails: a count, or a percentage of total.
    tolerated = models.PositiveIntegerField(default=0)
    tolerated_percent = models.FloatField(null=True, blank=True)
    # A redriven step's map (it took over its earlier attempt's children): the items that run
    # again lie among those kept, each with its step written already, and the next one to
    # start is looked for from this item_index on. Null for a first attempt, whose items
    # start in item order at ``started``.
    next_item = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.done}/{self.total} ({self.failed} failed)"


class ScheduleOverlap(models.TextChoices):
    """What a slot does when it is due while the schedule's previous run still goes."""

    SKIP = "skip"  # recorded as skipped (the default, as Temporal's)
    BUFFER_ONE = "buffer_one"  # runs when the running one ends; at most one waits
    ALLOW = "allow"  # runs beside it


class ScheduleCatchup(models.TextChoices):
    """What the scheduler does with the slots it missed (no worker was running)."""

    NONE = "none"
    LAST = "last"  # the latest missed slot within the window
    ALL = "all"  # every missed slot within the window, oldest first


class FlowSchedule(models.Model):
    """Runs a flow on a cron schedule through a django-q2 Schedule kept in step with it."""

    flow = models.OneToOneField(Flow, on_delete=models.CASCADE, related_name="schedule")
    cron = models.CharField(max_length=100, help_text="Cron expression, e.g. '*/5 * * * *'.")
    enabled = models.BooleanField(default=True)
    input = StoredJSONField(default=dict, blank=True)
    # db_default: a process still running the code before these columns can save schedules.
    overlap = models.CharField(
        max_length=16,
        choices=ScheduleOverlap.choices,
        default=ScheduleOverlap.SKIP,
        db_default=ScheduleOverlap.SKIP,
    )
    catchup = models.CharField(
        max_length=16,
        choices=ScheduleCatchup.choices,
        default=ScheduleCatchup.NONE,
        db_default=ScheduleCatchup.NONE,
    )
    catchup_window_seconds = models.PositiveIntegerField(default=86_400, db_default=86_400)
    # The latest slot the scheduler has dealt with (run, skipped or buffered): the slots
    # after it, up to now, are the ones due; those more than 5 minutes old were missed.
    last_slot_at = models.DateTimeField(null=True, blank=True)
    # buffer_one: the slot that waits for the running one to end.
    buffered_slot = models.DateTimeField(null=True, blank=True)
    skipped_slots = models.PositiveIntegerField(default=0, db_default=0)
    last_skipped_at = models.DateTimeField(null=True, blank=True)
    q_schedule = models.OneToOneField(
        "django_q.Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.flow_id} {self.cron}{'' if self.enabled else ' (paused)'}"


class Backfill(models.Model):
    """The runs of a flow's cron slots between two times, at most ``max_active`` at once.

    Its executions are made at once, the first ``max_active`` started and the rest left
    CREATED; each end starts the next (``services.backfills``, an ``@on_end`` handler)."""

    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="backfills")
    start = models.DateTimeField()
    end = models.DateTimeField()
    max_active = models.PositiveIntegerField()
    reprocess = models.CharField(max_length=16)
    # Runs that could not start when their turn came (their version no longer validates):
    # removed, counted here, and logged.
    refused = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.flow_id} {self.start:%Y-%m-%d %H:%M}..{self.end:%Y-%m-%d %H:%M}"


class FlowTrigger(models.Model):
    """One ``on_flow_end`` entry of a flow's current version, kept beside it (replaced with
    each new version) so that an end finds the flows it starts with one indexed query."""

    downstream = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="triggers")
    position = models.PositiveIntegerField()
    # Not a key: a trigger may name a flow stored later, and stays when that flow is deleted.
    upstream_flow_id = models.CharField(max_length=100, db_index=True)
    states = models.JSONField(default=list)
    condition = models.TextField(blank=True)

    class Meta:
        ordering = ["downstream_id", "position"]

    def __str__(self) -> str:
        return f"{self.upstream_flow_id} -> {self.downstream_id}"


class ExecutionEvent(models.Model):
    """A log line of an execution: the engine's decisions and what tasks logged."""

    # Look-ups by execution use the (execution, id) index below.
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    task_run = models.ForeignKey(
        TaskRun, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    created_at = models.DateTimeField()
    level = models.CharField(max_length=10, default="INFO")
    message = models.TextField()

    class Meta:
        ordering = ["execution_id", "id"]
        indexes = [models.Index(fields=["execution", "id"], name="event_exec_id_idx")]

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.level} {self.message[:60]}"


class SecretQuerySet(models.QuerySet["Secret"]):
    def listed(self) -> SecretQuerySet:
        """Secrets as the API, the pages and the admin list them: with their authors' names,
        and without the encrypted value, which no face shows (one query however many)."""
        return self.select_related("created_by", "updated_by").defer("value")


class Secret(models.Model):
    """A named secret that flows reference as ``${secrets.NAME}``, resolved only in the worker.

    ``value`` holds the Fernet token (flows/vault.py), never the plain value; nothing reads it
    back to a person: the API, the pages and the admin show the name and the dates only.
    """

    name = models.CharField(primary_key=True, max_length=100)
    value = models.TextField(help_text="The value encrypted under FLOW_SECRET_KEYS.")
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = SecretQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        # One right for every write and no "view": nobody reads a value back, and the names
        # are visible to whoever reads flows (their documents reference them anyway). Held by
        # admins and the secrets_admin role (migration 0013).
        default_permissions = ()
        permissions = [("manage_secret", "Can create, replace and delete secrets")]

    def __str__(self) -> str:
        return self.name


class ExecutionEnd(models.Model):
    """Outbox: a top-level execution that ended, written in the transaction that ended it.

    What must follow an end (flow triggers, notifications, error-handler flows) is done from
    these rows by ``services.ends``, in transactions that delete the row they handle: once,
    even when a worker dies between the end and its consequences. A child execution (a map
    item, a branch) writes none.
    """

    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    flow_id = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    ended_at = models.DateTimeField()
    # A handler that raised leaves the row for later: how often, why, and not before when.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    not_before = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["execution"], name="executionend_execution_idx")]

    def __str__(self) -> str:
        return f"{self.flow_id} {self.execution_id} {self.status}"


# ---------------------------------------------------------------------------------------------
# Notifications and alerts (flows/services/alerts.py, flows/notify.py)
# ---------------------------------------------------------------------------------------------
class ChannelKind(models.TextChoices):
    EMAIL = "email"
    WEBHOOK = "webhook"
    SLACK = "slack"


class Channel(models.Model):
    """Where alerts are sent: an email list, a signed JSON webhook, or a Slack incoming webhook.

    ``config`` holds what may be shown (``to`` addresses, a webhook's ``url``); ``secret``
    holds, encrypted with ``flows.vault``, what may not: a webhook's signing key (shown once,
    when the channel is created) and a Slack webhook's URL (which is its credential).
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    config = models.JSONField(default=dict, blank=True)
    secret = models.TextField(blank=True, help_text="Encrypted under FLOW_SECRET_KEYS.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        # Reading channels, rules and deliveries needs view_execution; every write this.
        # Held by admins and the editor role (migration 0015).
        default_permissions = ()
        permissions = [("manage_alerts", "Can create, change and delete channels and rules")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class AlertEvent(models.TextChoices):
    EXECUTION_FAILED = "execution_failed"
    FAILURES_IN_A_ROW = "failures_in_a_row"
    RECOVERED = "recovered"
    TIMED_OUT = "timed_out"
    RUNNING_LONGER_THAN = "running_longer_than"
    WAITING_FOR_SIGNAL = "waiting_for_signal"
    WEBHOOK_REFUSED = "webhook_refused"


class AlertRule(models.Model):
    """When to alert: an event of one flow's executions (or of every flow's, ``flow`` null),
    sent to ``channels``; repeats within ``cooldown_seconds`` of an alert are counted on it."""

    flow = models.ForeignKey(
        Flow, null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules"
    )
    event = models.CharField(max_length=32, choices=AlertEvent.choices)
    # failures_in_a_row: how many; running_longer_than: seconds. Unused by the other events.
    threshold = models.PositiveIntegerField(null=True, blank=True)
    channels = models.ManyToManyField(Channel, related_name="rules", blank=True)
    cooldown_seconds = models.PositiveIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        default_permissions = ()
        indexes = [models.Index(fields=["event"], name="alertrule_event_idx")]

    def __str__(self) -> str:
        return f"{self.event} of {self.flow_id or 'every flow'}"


class Alert(models.Model):
    """One sent alert of a rule about one flow, and how many times it happened again within
    the rule's cooldown (counted here, not sent again)."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    flow_id = models.CharField(max_length=100, blank=True)
    count = models.PositiveIntegerField(default=1)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    # The last occurrence's execution (kept as an id: an alert outlives a purged execution).
    last_execution_id = models.UUIDField(null=True, blank=True)
    summary = models.TextField(blank=True)

    class Meta:
        ordering = ["-first_at"]
        indexes = [models.Index(fields=["rule", "flow_id", "-first_at"], name="alert_rule_idx")]

    def __str__(self) -> str:
        return f"{self.rule} x{self.count}"


class AlertMark(models.Model):
    """What a periodic check has alerted about already, per rule: a long run
    (``running_longer_than``: ``execution``) or a waiting step (``waiting_for_signal``:
    ``step``). Each goes with what it marks when that is deleted."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="+")
    execution = models.ForeignKey(
        Execution, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    step = models.ForeignKey(
        TaskRun, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )

    class Meta:
        # NULLs are distinct in both databases: one mark per (rule, execution), (rule, step).
        constraints = [
            models.UniqueConstraint(fields=["rule", "execution"], name="alertmark_execution_once"),
            models.UniqueConstraint(fields=["rule", "step"], name="alertmark_step_once"),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.execution_id or ''}{self.step_id or ''}"


class NotificationState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    GIVEN_UP = "given_up"


OPEN_NOTIFICATION_STATES = (
    NotificationState.PENDING,
    NotificationState.SENDING,
    NotificationState.RETRYING,
)


class Notification(models.Model):
    """Outbox: one message to one channel, written in the transaction of what it reports (an
    execution's end, a check's pass) and sent later by the workers (flows/notify.py)."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="notifications")
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    payload = models.JSONField(default=dict)
    state = models.CharField(
        max_length=16, choices=NotificationState.choices, default=NotificationState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # While a worker sends it: until when the claim holds (a worker killed mid-send lets go).
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The sender's look for each channel's oldest open message.
            models.Index(
                fields=["channel", "id"],
                condition=Q(state__in=["pending", "sending", "retrying"]),
                name="notification_open_idx",
            ),
            models.Index(fields=["state", "-id"], name="notification_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.channel_id} #{self.pk} {self.state}"


# --- Webhooks (flows/services/webhooks.py, README "Webhooks") ------------------------------
class WebhookAuth(models.TextChoices):
    TOKEN = "token"  # noqa: S105 (a mode's name) the URL alone, or a shared secret in a header
    HMAC = "hmac"  # a signature over the raw body


class WebhookPreset(models.TextChoices):
    GITHUB = "github"
    STRIPE = "stripe"


class WebhookAlgorithm(models.TextChoices):
    SHA256 = "sha256"
    SHA1 = "sha1"


class WebhookEncoding(models.TextChoices):
    HEX = "hex"
    BASE64 = "base64"


class Webhook(models.Model):
    """A URL (``POST /hooks/<slug>``) that starts an execution of ``flow`` per delivery.

    ``secret`` and ``previous_secret`` hold Fernet tokens (flows/vault.py), never the plain
    values; both check signatures, so a sender can move to a rotated secret at its own pace.
    The rate counter (``rate_minute``, ``rate_count``) is written by one conditional UPDATE
    per delivery, so the limit holds across processes.
    """

    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="webhooks")
    slug = models.CharField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    auth = models.CharField(max_length=8, choices=WebhookAuth.choices)
    preset = models.CharField(max_length=8, choices=WebhookPreset.choices, blank=True)
    # hmac: the header carrying the signature; token: the header carrying the shared secret
    # (blank: the URL alone is the credential).
    header = models.CharField(max_length=100, blank=True)
    algorithm = models.CharField(
        max_length=8, choices=WebhookAlgorithm.choices, default=WebhookAlgorithm.SHA256
    )
    prefix = models.CharField(max_length=40, blank=True)
    encoding = models.CharField(
        max_length=8, choices=WebhookEncoding.choices, default=WebhookEncoding.HEX
    )
    tolerance_seconds = models.PositiveIntegerField(default=300)
    secret = models.TextField(blank=True, help_text="Encrypted under FLOW_SECRET_KEYS.")
    previous_secret = models.TextField(blank=True, help_text="Encrypted; valid until dropped.")
    rotated_at = models.DateTimeField(null=True, blank=True)
    input_mapping = StoredJSONField(null=True, blank=True)
    dedup_header = models.CharField(max_length=100, blank=True)
    dedup_path = models.CharField(max_length=200, blank=True)
    dedup_window_seconds = models.PositiveIntegerField(default=86400)
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    raw_text = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    rate_minute = models.BigIntegerField(default=0)
    rate_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["flow_id", "created_at"]

    def __str__(self) -> str:
        return f"{self.flow_id} {self.auth}{f' ({self.preset})' if self.preset else ''}"


class DeliveryOutcome(models.TextChoices):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


class WebhookDelivery(models.Model):
    """One request to a hook, accepted or not, with why: a refused delivery is never silent.

    ``payload`` keeps the first FLOW_WEBHOOK_PAYLOAD_KEEP_BYTES of the body as text; the
    retention purge deletes deliveries with the executions of their age."""

    hook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    received_at = models.DateTimeField()
    # Not "status": what became of the delivery, not a state an engine moves it through.
    outcome = models.CharField(max_length=10, choices=DeliveryOutcome.choices)
    http_status = models.PositiveSmallIntegerField()
    reason = models.CharField(max_length=500, blank=True)
    delivery_id = models.CharField(max_length=200, blank=True)
    execution = models.ForeignKey(
        Execution, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    payload = models.TextField(blank=True)
    payload_size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["hook", "-received_at"], name="delivery_hook_received_idx"),
            models.Index(fields=["received_at"], name="delivery_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.hook_id} {self.outcome} {self.http_status}"


class WebhookDedup(models.Model):
    """A delivery id a hook accepted, with the execution it started, until ``expires_at``.

    Inserted in the transaction that starts the execution: its unique (hook, key) makes
    two concurrent deliveries of one id start one execution (the second insert waits for the
    first transaction and fails, and answers with the first's execution)."""

    hook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=200)
    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="+")
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hook", "key"], name="webhookdedup_hook_key"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="webhookdedup_expires_idx")]

    def __str__(self) -> str:
        return f"{self.hook_id} {self.key}"


class LimitFairness(models.TextChoices):
    FIFO = "fifo", "First come, first served"
    ROUND_ROBIN = "round_robin", "Round robin between keys"


class ConcurrencyLimit(models.Model):
    """A named limit on what tasks call (a partner API): at most ``max_in_flight`` steps that
    take it run at once, and with a rate, at most ``rate_count`` start in any
    ``rate_per_seconds``. A task takes it with ``"limits": [name]``; the engine takes and
    frees its slots (flows/engine/limits.py), ``services.limits`` writes it.

    ``key`` (CEL over the step's parameters) groups the waiting steps: with ``round_robin``
    the next slot goes to the key with the fewest steps in flight, so one tenant's thousand
    steps do not hold back another's first.
    """

    name = models.CharField(primary_key=True, max_length=100)
    max_in_flight = models.PositiveIntegerField()
    rate_count = models.PositiveIntegerField(null=True, blank=True)
    rate_per_seconds = models.FloatField(null=True, blank=True)
    key = models.TextField(blank=True, help_text="CEL over the step's parameters.")
    fairness = models.CharField(
        max_length=16, choices=LimitFairness.choices, default=LimitFairness.FIFO
    )
    description = models.CharField(max_length=500, blank=True)
    # The start times (epoch seconds) of the last rate_count steps: the sliding window.
    recent_starts = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = [("manage_limit", "Can create, change and delete concurrency limits")]

    def __str__(self) -> str:
        return self.name


class LimitHold(models.Model):
    """A step's slot of a limit (``held``), or its place in the limit's queue (not held).

    Written and deleted only by the engine: taken in the claim's transaction, freed in the
    record's (or the reaper's), handed to the next waiter there. A row whose step ended
    without freeing it (a cancel of a waiting step) counts for nothing and is swept.
    """

    limit = models.ForeignKey(ConcurrencyLimit, on_delete=models.CASCADE, related_name="+")
    step = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200, blank=True)
    held = models.BooleanField(default=False)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        indexes = [
            # The next waiter first come (fifo), and the slots in use: read in id order.
            models.Index(fields=["limit", "held", "id"], name="limithold_limit_idx"),
            # The next waiter by key (round_robin).
            models.Index(fields=["limit", "held", "key", "id"], name="limithold_key_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["step", "limit"], name="limithold_one_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.limit_id} {'held' if self.held else 'waiting'} by step {self.step_id}"


class FlowSlot(models.Model):
    """The row that admissions of one flow's key lock (max_concurrent_executions): starts and
    ends of its executions take it, so two starts at once never both take the last place."""

    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=200, blank=True)
    max_in_flight = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flow", "key"], name="flowslot_unique")]

    def __str__(self) -> str:
        return f"{self.flow_id} [{self.key}] max {self.max_in_flight}"
