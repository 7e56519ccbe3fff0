"""Shapes of the resource API (``/api/``): what it reads from requests and what it answers."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from flows import services
from flows.api.errors import FieldErrorSerializer
from flows.definition import unstorable_problem
from flows.large import Budget
from flows.models import (
    API_LIST_FIELDS,
    Execution,
    ExecutionEvent,
    Flow,
    FlowVersion,
    ScheduleCatchup,
    ScheduleOverlap,
    TaskRun,
)
from flows.waiting import children_holders, fanout_of, signal_of, waiting_of

# The flow document, for the OpenAPI schema only: flows/definition/ is what checks it, and
# it reports every problem with its field path (a 400 with ``errors``).
_TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "task_type"],
    "properties": {
        "name": {"type": "string", "example": "task1"},
        "task_type": {"type": "string", "example": "fetch_data"},
        "description": {"type": "string"},
        "parameters": {"type": "object", "additionalProperties": True},
        "timeout_seconds": {"type": "number"},
    },
}
_CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["source_task", "outcome", "target_task_success", "target_task_failure"],
    "properties": {
        "name": {"type": "string"},
        "source_task": {"type": "string"},
        "outcome": {"type": "string", "enum": ["success", "failure"]},
        "target_task_success": {"type": "string", "description": 'a task name or "end"'},
        "target_task_failure": {"type": "string", "description": 'a task name or "end"'},
    },
}
FLOW_DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "A flow document (README, 'Flow documents'), bare or wrapped as {\"flow\": {...}}. "
        "Every problem is reported at once, each with its field path."
    ),
    "properties": {
        "id": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$", "maxLength": 100},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "start_task": {"type": "string"},
        "max_steps": {"type": "integer", "minimum": 1},
        "tasks": {"type": "array", "minItems": 1, "items": _TASK_SCHEMA},
        "conditions": {"type": "array", "items": _CONDITION_SCHEMA},
        "input_schema": {
            "type": "object",
            "description": "JSON Schema (draft 2020-12) of an object: every start checks its "
            "input against it and fills its defaults (README, 'Flow input schema').",
        },
        "flow": {"type": "object", "description": "The same document, wrapped."},
    },
    "additionalProperties": True,
}


class FlowSerializer(serializers.ModelSerializer):
    class Meta:
        model = Flow
        fields = ["id", "name", "version", "created_at", "updated_at"]
        extra_kwargs = {"version": {"help_text": "The latest version; executions start it."}}


class FlowDetailSerializer(FlowSerializer):
    description = serializers.SerializerMethodField()
    definition = serializers.DictField(help_text="The latest version's flow document.")

    class Meta(FlowSerializer.Meta):
        fields = [*FlowSerializer.Meta.fields, "description", "definition"]

    def get_description(self, flow: Flow) -> str:
        value = flow.definition.get("description", "") if isinstance(flow.definition, dict) else ""
        return value if isinstance(value, str) else ""


class FlowWrittenSerializer(FlowDetailSerializer):
    """A flow just stored, with the warnings its new version drew (tasks nothing reaches)."""

    warnings = serializers.SerializerMethodField()
    new_version = serializers.SerializerMethodField(
        help_text="False when the document was the flow's current one: nothing was stored."
    )

    class Meta(FlowDetailSerializer.Meta):
        fields = [*FlowDetailSerializer.Meta.fields, "new_version", "warnings"]

    def get_new_version(self, flow: Flow) -> bool:
        return bool(self.context.get("new_version", True))

    @extend_schema_field(FieldErrorSerializer(many=True))
    def get_warnings(self, flow: Flow) -> list[dict[str, str]]:
        return list(self.context.get("warnings", []))


class FlowVersionSerializer(serializers.ModelSerializer):
    flow = serializers.CharField(source="flow_id", read_only=True)
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = FlowVersion
        fields = ["flow", "version", "created_at", "created_by"]


class FlowVersionDetailSerializer(FlowVersionSerializer):
    definition = serializers.DictField(help_text="This version's flow document, as stored.")

    class Meta(FlowVersionSerializer.Meta):
        fields = [*FlowVersionSerializer.Meta.fields, "definition"]


class ValidationReportSerializer(serializers.Serializer):
    valid = serializers.BooleanField(help_text="True when the document would be stored.")
    flow_id = serializers.CharField(
        allow_null=True, help_text="The id the document gave (valid or not); null if none."
    )
    errors = FieldErrorSerializer(many=True, help_text="Why it would be refused (if not valid).")
    warnings = FieldErrorSerializer(many=True, help_text="Tasks no path reaches, and the like.")


class InputCheckedSerializer(serializers.Serializer):
    valid = serializers.BooleanField(help_text="Always true: an invalid input is a 400.")
    input = serializers.DictField(
        help_text="The input an execution would start with: the schema's defaults filled in."
    )


class StartExecutionSerializer(serializers.Serializer):
    version = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Flow version to run; the latest when left out.",
    )
    input = serializers.DictField(
        required=False, help_text="A JSON object the tasks read as self.context.input."
    )

    def validate_input(self, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here, before the body's fingerprint is taken (which encodes it as UTF-8).
        problem = unstorable_problem(value, "input")
        if problem:
            raise serializers.ValidationError(problem)
        return value


class BulkItemSerializer(serializers.Serializer):
    """One item of a bulk start (documents the shape; ``services.executions_start`` checks it)."""

    input = serializers.DictField(
        required=False, help_text="A JSON object the tasks read as self.context.input."
    )
    idempotency_key = serializers.CharField(
        required=False,
        max_length=200,
        help_text="As the single start's Idempotency-Key header: a key this user already "
        "used for this flow answers the execution it started, created: false.",
    )


class ParsedJSON(serializers.JSONField):
    """A value of a body the JSON parser read (the API takes JSON only), kept as it is: a bulk
    start's 1,000 items are not encoded again one by one to see that they are JSON."""

    def to_internal_value(self, data: Any) -> Any:
        return data


@extend_schema_field(BulkItemSerializer(many=True))
class BulkItemsField(serializers.ListField):
    """``items``: a list of any JSON; each item is checked by the service, which names the
    item (``items[3].input``) in every error."""

    child = ParsedJSON()


class BulkStartSerializer(serializers.Serializer):
    version = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Flow version every execution runs; the latest when left out.",
    )
    inputs = serializers.ListField(
        child=ParsedJSON(),
        required=False,
        help_text="One input object per execution (the short form of `items`).",
    )
    items = BulkItemsField(
        required=False, help_text="One item per execution, each with its own idempotency key."
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("inputs" in data) == ("items" in data):
            raise serializers.ValidationError(
                {"items": ["send either items or inputs (a list of input objects), not both"]}
                if "items" in data
                else {"items": ["send items (or inputs: a list of input objects)"]}
            )
        return data


class BulkStartedSerializer(serializers.Serializer):
    class StartedSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        status_url = serializers.CharField(help_text="GET it for the execution and its steps.")
        created = serializers.BooleanField(
            help_text="false: its idempotency key had started it before; nothing new."
        )

    executions = StartedSerializer(many=True, help_text="One per item, in the items' order.")


class ParentSerializer(serializers.Serializer):
    execution = serializers.UUIDField(help_text="The parent execution.")
    seq = serializers.IntegerField(help_text="The parent's step that started this child.")
    task_name = serializers.CharField()


class ExecutionListSerializer(serializers.ListSerializer):
    """A page of executions, with their input sizes read in one query for the page."""

    def to_representation(self, data: Any) -> list[dict[str, Any]]:
        rows = list(data.all() if hasattr(data, "all") else data)
        missing = [row.pk for row in rows if not hasattr(row, "input_size")]
        if missing:
            sizes = Execution.objects.input_sizes(missing)
            for row in rows:
                if not hasattr(row, "input_size"):
                    row.input_size = sizes.get(row.pk, 0)
        return super().to_representation(rows)


class ExecutionSerializer(serializers.ModelSerializer):
    flow = serializers.CharField(source="flow_id", read_only=True)
    flow_name = serializers.CharField(source="flow.name", read_only=True)
    flow_version = serializers.IntegerField(source="flow_version.version", read_only=True)
    rerun_of = serializers.UUIDField(source="rerun_of_id", read_only=True, allow_null=True)
    triggered_by = serializers.UUIDField(
        source="triggered_by_id",
        read_only=True,
        allow_null=True,
        help_text='Trigger "flow": the execution whose end started this one.',
    )
    scheduled_for = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text='Trigger "schedule" or "backfill": the cron slot this run is for.',
    )
    backfill = serializers.IntegerField(
        source="backfill_id",
        read_only=True,
        allow_null=True,
        help_text='Trigger "backfill": the backfill that made it.',
    )
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True, default=None
    )
    input_size = serializers.IntegerField(
        read_only=True,
        help_text="Bytes of the input's JSON text as stored. Lists carry no input: its size "
        "and input_url (the whole input) instead.",
    )
    input_url = serializers.SerializerMethodField(help_text="GET it for the whole input.")
    parent = serializers.SerializerMethodField(
        help_text="A child execution (a parallel branch, a map item, a sub-flow): the parent "
        "execution and its step that started it; null for a top-level execution."
    )
    root = serializers.UUIDField(
        source="root_id",
        read_only=True,
        allow_null=True,
        help_text="The top execution of this child's tree; null for a top-level execution.",
    )

    class Meta:
        model = Execution
        # The columns the list loads (Execution.objects.for_api_list), the flow's name and the
        # execution's place in a tree of children.
        fields = [
            *API_LIST_FIELDS,
            "input_size",
            "input_url",
            "flow_name",
            "parent",
            "root",
            "branch",
            "item_index",
        ]
        read_only_fields = fields
        list_serializer_class = ExecutionListSerializer
        extra_kwargs = {
            "branch": {"help_text": "A parallel branch's name; empty otherwise."},
            "item_index": {"help_text": "Its place among its parent step's children."},
        }

    def get_input_url(self, execution: Execution) -> str:
        return reverse("execution-input", args=[execution.pk])

    @extend_schema_field(ParentSerializer(allow_null=True))
    def get_parent(self, execution: Execution) -> dict[str, Any] | None:
        if execution.parent_step_id is None:
            return None
        step = execution.parent_step  # joined by Execution.objects.for_api_list
        return {"execution": step.execution_id, "seq": step.seq, "task_name": step.task_name}


class CutValueSerializer(serializers.Serializer):
    """A value too large to show whole (past FLOW_SHOW_MAX_BYTES): its field is null."""

    size = serializers.IntegerField(help_text="Bytes of the whole value's JSON text.")
    preview = serializers.CharField(
        allow_blank=True,
        help_text="The first FLOW_SHOW_MAX_BYTES bytes of its compact JSON text (not valid "
        "JSON on its own); less, or empty, once the answer has shown FLOW_SHOW_TOTAL_BYTES.",
    )
    url = serializers.CharField(help_text="GET it for the whole value.")


class CutsLargeValues(serializers.Serializer):
    """Shows each of ``large_fields`` whole up to FLOW_SHOW_MAX_BYTES of JSON (and while the
    answer has shown less than FLOW_SHOW_TOTAL_BYTES); past that the field is null and
    ``truncated[field]`` holds its size, a preview and its download url."""

    large_fields: tuple[str, ...] = ()

    def download_url(self, instance: Any, name: str) -> str:
        raise NotImplementedError

    def to_representation(self, instance: Any) -> dict[str, Any]:
        # One budget for the whole answer: nested step serializers share the root's context.
        budget = self.context.setdefault("show_budget", Budget())
        # This object's values take their share before its nested ones (an execution's input
        # before its steps' results), in the order the pages show them.
        views = {
            name: budget.show(getattr(instance, name))
            for name in self.large_fields
            if getattr(instance, name) is not None
        }
        data = super().to_representation(instance)
        cuts = {}
        for name, view in views.items():
            if view.cut:
                data[name] = None
                url = self.download_url(instance, name)
                cuts[name] = {"size": view.size, "preview": view.text, "url": url}
        data["truncated"] = cuts
        return data


_TRUNCATED = serializers.DictField(
    child=CutValueSerializer(),
    help_text="The values shown cut (their fields are null), by field name; {} when none.",
)


class WaitingSerializer(serializers.Serializer):
    """What an open step waits for in the database (``TaskRun.waiting``), for people."""

    kind = serializers.ChoiceField(
        choices=["signal", "until", "children", "limit"],
        help_text="signal: a wait_for_signal step; until: a sleep (or a timed wait); "
        "children: a parallel, map or subflow step waiting for its children; limit: a step "
        "waiting for a slot of a named limit (or its flow's turn: max_concurrent_executions).",
    )
    signal = serializers.CharField(
        allow_null=True, help_text="The signal name it waits for (kind signal)."
    )
    prompt = serializers.CharField(allow_blank=True, help_text="What the approver is asked.")
    until = serializers.DateTimeField(
        allow_null=True,
        help_text="When the wait ends by itself: a sleep's end, a signal's timeout, a limit's "
        "rate window; null: never.",
    )
    received = serializers.BooleanField(
        help_text="A signal came; the step runs on as soon as a worker picks it up."
    )
    limit = serializers.CharField(
        allow_null=True,
        help_text="kind limit: the limit's name (/api/limits/), or `flow` for the flow's own "
        "max_concurrent_executions; else null.",
    )
    place = serializers.IntegerField(
        allow_null=True,
        help_text="kind limit: its place in the queue when it began waiting (null: it waits "
        "for the rate's window).",
    )


class SignalAnswerSerializer(serializers.Serializer):
    """The signal a ``wait_for_signal`` step got: who answered, when, how, and why."""

    name = serializers.CharField(help_text="The signal's name.")
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    by = serializers.CharField(allow_blank=True, help_text="The user who sent it.")
    at = serializers.DateTimeField(help_text="When it came.")
    comment = serializers.CharField(allow_blank=True)
    payload = serializers.DictField(
        allow_null=True, help_text="What came with it (approve: the result)."
    )


class ChildrenSerializer(serializers.Serializer):
    """The children of a parallel, map or subflow step, counted as they end (``FanOut``)."""

    kind = serializers.CharField(help_text="parallel, map or subflow")
    total = serializers.IntegerField()
    started = serializers.IntegerField(
        help_text="Children started so far (a map starts at most max_concurrency at once)."
    )
    done = serializers.IntegerField(help_text="Children that ended, failed ones included.")
    failed = serializers.IntegerField()
    url = serializers.CharField(
        help_text="The API list of these children, in item order (under the step that holds "
        "them now)."
    )
    taken_over_by = serializers.IntegerField(
        allow_null=True,
        help_text="The seq of the later step (a redrive's) that took these children over and "
        "lists them now; null while they are this step's.",
    )


def children_of(step: TaskRun) -> dict[str, Any] | None:
    """A control step's children counts and the API list of them, else None."""
    fanout = fanout_of(step)
    if fanout is None:
        return None
    # A redrive's later step takes the children over (engine.redrive), and the next redrive's
    # from it: they are listed under the last. Its execution's steps: prefetched with the
    # detail (for_api_detail), no query.
    holder = children_holders(step.execution.steps.all()).get(step.pk)
    return {
        "kind": fanout.kind,
        "total": fanout.total,
        "started": fanout.started,
        "done": fanout.done,
        "failed": fanout.failed,
        "url": f"{reverse('execution-list')}?step={(holder or step).pk}",
        "taken_over_by": holder.seq if holder else None,
    }


class StepSerializer(CutsLargeValues, serializers.ModelSerializer):
    large_fields = ("parameters", "result")
    parameters = serializers.DictField(
        read_only=True, allow_null=True, help_text="Null when too large: see truncated."
    )
    result = serializers.JSONField(
        read_only=True, allow_null=True, help_text="Null when too large: see truncated."
    )
    truncated = serializers.SerializerMethodField()
    id = serializers.IntegerField(
        read_only=True, help_text="The step's id: `?step=<id>` lists a control step's children."
    )
    waiting = serializers.SerializerMethodField(
        help_text="What the open step waits for (a signal, a time, its children); else null."
    )
    children = serializers.SerializerMethodField(
        help_text="A parallel, map or subflow step: its children's counts; else null."
    )
    signal = serializers.SerializerMethodField(
        help_text="A wait_for_signal step that got its signal: who, when, the decision, the "
        "comment and the payload (kept after the step ended); else null."
    )

    @extend_schema_field(WaitingSerializer(allow_null=True))
    def get_waiting(self, step: TaskRun) -> dict[str, Any] | None:
        return waiting_of(step)

    @extend_schema_field(SignalAnswerSerializer(allow_null=True))
    def get_signal(self, step: TaskRun) -> dict[str, Any] | None:
        return signal_of(step)

    @extend_schema_field(ChildrenSerializer(allow_null=True))
    def get_children(self, step: TaskRun) -> dict[str, Any] | None:
        return children_of(step)

    @extend_schema_field(_TRUNCATED)
    def get_truncated(self, step: TaskRun) -> dict[str, Any]:
        return {}  # filled by CutsLargeValues.to_representation

    def download_url(self, step: TaskRun, name: str) -> str:
        return reverse("execution-step-value", args=[step.execution_id, step.seq, name])

    class Meta:
        model = TaskRun
        fields = [
            "seq",
            "task_name",
            "task_type",
            "attempt",
            "status",
            "parameters",
            "result",
            "error",
            "traceback",
            "route",
            "created_at",
            "started_at",
            "ended_at",
            "duration",
            "id",
            "waiting",
            "children",
            "truncated",
            "signal",
        ]
        read_only_fields = fields


class ExecutionDetailSerializer(CutsLargeValues, ExecutionSerializer):
    large_fields = ("input",)
    input = serializers.DictField(
        read_only=True, allow_null=True, help_text="Null when too large: see truncated."
    )
    truncated = serializers.SerializerMethodField()
    steps = StepSerializer(many=True, read_only=True, help_text="Every step in run order.")

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "input", "truncated", "steps"]
        read_only_fields = fields

    @extend_schema_field(_TRUNCATED)
    def get_truncated(self, execution: Execution) -> dict[str, Any]:
        return {}  # filled by CutsLargeValues.to_representation

    def download_url(self, execution: Execution, name: str) -> str:
        return reverse("execution-input", args=[execution.pk])

    def to_representation(self, instance: Execution) -> dict[str, Any]:
        data = super().to_representation(instance)
        if "input" in data["truncated"]:  # one figure for one input: the stored size
            data["truncated"]["input"]["size"] = data["input_size"]
        return data


class SignalSerializer(serializers.Serializer):
    """A signal for the step of the execution that waits for it (a wait_for_signal task)."""

    name = serializers.CharField(
        max_length=100, help_text="The signal the step waits for (its `signal` parameter)."
    )
    decision = serializers.ChoiceField(
        choices=["approve", "reject"],
        default="approve",
        help_text="approve: the payload becomes the step's result; reject: the step fails and "
        "its failure route applies.",
    )
    payload = serializers.JSONField(
        required=False,
        default=None,
        help_text="A JSON object (optional); approve makes it the step's result.",
    )
    comment = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=2000,
        help_text="Why; kept on the step (`signal`), shown in a rejected step's error and the "
        "execution's log.",
    )  # fmt: skip

    def validate_payload(self, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError('must be a JSON object, e.g. {"key": 1}')
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        for field in ("payload", "comment"):
            problem = unstorable_problem(data.get(field), field)
            if problem:
                raise serializers.ValidationError({field: [problem]})
        return data


class EventsQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=2**63 - 1,
        help_text="Only lines after this seq (the last seq you have; 0 for all).",
    )
    limit = serializers.IntegerField(
        required=False, default=200, min_value=1, max_value=1000, help_text="At most this many."
    )


class EventSerializer(serializers.ModelSerializer):
    seq = serializers.IntegerField(source="id", read_only=True, help_text="Increasing, not dense.")
    step = serializers.IntegerField(
        source="task_run.seq", read_only=True, allow_null=True, default=None
    )
    task_name = serializers.CharField(
        source="task_run.task_name", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = ExecutionEvent
        fields = ["seq", "created_at", "level", "message", "step", "task_name"]
        read_only_fields = fields


class EventPageSerializer(serializers.Serializer):
    execution = serializers.UUIDField()
    status = serializers.CharField(help_text="The execution's status now.")
    finished = serializers.BooleanField(help_text="The execution has ended: no more lines come.")
    events = EventSerializer(many=True)
    next_after = serializers.IntegerField(help_text="Pass as ?after= to get the lines after these.")
    more = serializers.BooleanField(help_text="More lines are already waiting past this page.")


class TaskTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    parameters_schema = serializers.DictField(help_text="JSON Schema of the task's parameters.")
    defaults = serializers.DictField(help_text="Parameter defaults declared by the schema.")
    default_timeout = serializers.FloatField(
        allow_null=True, help_text="Seconds; null means FLOW_DEFAULT_TASK_TIMEOUT."
    )


class ScheduleSerializer(serializers.Serializer):
    """A flow's cron schedule; each run is an execution with trigger "schedule"."""

    cron = serializers.CharField(help_text="Cron expression, e.g. '*/15 * * * *'.")
    enabled = serializers.BooleanField(default=True, help_text="false pauses the schedule.")
    input = serializers.DictField(
        required=False, default=dict, help_text="The input object of each scheduled run."
    )
    overlap = serializers.ChoiceField(
        choices=ScheduleOverlap.choices,
        required=False,
        help_text="A slot due while the schedule's last run goes: skip it (default), "
        "buffer_one (run it when that one ends; at most one waits), allow (run it anyway). "
        "Left out: unchanged.",
    )
    catchup = serializers.ChoiceField(
        choices=ScheduleCatchup.choices,
        required=False,
        help_text="Slots missed while no worker ran: none (default), last, all (within "
        "catchup_window_seconds). Left out: unchanged.",
    )
    catchup_window_seconds = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=services.MAX_CATCHUP_WINDOW,
        help_text="How far back a missed slot is still caught up (default 86400).",
    )
    next_run = serializers.SerializerMethodField()
    last_slot_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="The latest slot the scheduler dealt with."
    )
    buffered_slot = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="buffer_one: the slot waiting for the running one to end.",
    )
    skipped_slots = serializers.IntegerField(
        read_only=True, help_text="Slots skipped so far (overlap skip, missed slots)."
    )
    last_skipped_at = serializers.DateTimeField(read_only=True, allow_null=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def get_next_run(self, obj: Any) -> str | None:
        q = getattr(obj, "q_schedule", None)
        return q.next_run.isoformat() if q is not None and obj.enabled and q.next_run else None


class BackfillRequestSerializer(serializers.Serializer):
    """A backfill of the flow's cron slots in [start, end] (``services.backfill_create``)."""

    start = serializers.DateTimeField(help_text="The first slot time looked at (inclusive).")
    end = serializers.DateTimeField(help_text="The last slot time looked at (inclusive).")
    dry_run = serializers.BooleanField(
        default=False, help_text="true: answer what would happen to each slot; start nothing."
    )
    max_active = serializers.IntegerField(
        default=1,
        help_text="At most this many of the backfill's runs at once (1 to 100); the others "
        "wait, created, and start as earlier ones end.",
    )
    reprocess = serializers.ChoiceField(
        choices=["none", "failed", "all"],
        default="none",
        help_text="Slots that ran already: none skips them, failed reruns the FAILED and "
        "CANCELLED ones, all reruns every one.",
    )
    input = serializers.DictField(
        required=False,
        help_text="The input of every run; left out: the schedule's current input.",
    )


class BackfillSlotSerializer(serializers.Serializer):
    slot = serializers.DateTimeField()
    action = serializers.ChoiceField(choices=["run", "rerun", "skip"])
    reason = serializers.CharField()
    execution = serializers.UUIDField(
        allow_null=True,
        help_text="A run or rerun: the execution made (null in a dry run); a skip or a "
        "dry run's rerun: the slot's latest run.",
    )


class BackfillSerializer(serializers.Serializer):
    backfill = serializers.IntegerField(allow_null=True, help_text="Null for a dry run.")
    dry_run = serializers.BooleanField()
    slots = BackfillSlotSerializer(many=True)
    counts = serializers.DictField(
        child=serializers.IntegerField(), help_text="How many slots of each action."
    )
