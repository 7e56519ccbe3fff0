"""``/api/executions/``: executions with their steps, their controls and their log lines.
(Scope and permissions: flows/api/resource/__init__.py.)"""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.resource import examples as ex
from flows.api.resource.base import ResourceViewSet, can, execution_detail
from flows.api.resource.filters import ExecutionFilter
from flows.api.resource.serializers import (
    EventPageSerializer,
    EventSerializer,
    EventsQuerySerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    SignalSerializer,
    StepSerializer,
)
from flows.api.schema import READ, WRITE, error_responses
from flows.models import Execution, ExecutionEvent, TaskRun


@extend_schema(tags=["executions"])
@extend_schema_view(
    list=extend_schema(
        summary="List executions",
        description="Top-level executions, newest first by default; order by created_at, "
        "started_at, ended_at or status (prefix - for descending). 50 per page (`page_size` up "
        "to 200). `?parent=<execution id>` lists that execution's children (parallel branches, "
        "map items, sub-flows) and `?step=<step id>` one control step's, in item order.",
        responses={200: ExecutionSerializer(many=True), **error_responses(400, 401, 403, 404)},
        examples=[ex.answer("Executions", ex.EXECUTION_ROW)],
    ),
    retrieve=extend_schema(
        summary="An execution with its steps",
        responses={200: ExecutionDetailSerializer, **error_responses(*READ)},
        examples=[ex.answer("Completed", ex.EXECUTION)],
    ),
)
class ExecutionViewSet(ResourceViewSet):
    """Runs of flow versions, with their steps and log lines; started from a flow."""

    noun = "execution"
    queryset = Execution.objects.all()
    serializer_class = ExecutionSerializer
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = ExecutionFilter
    ordering_fields = ["created_at", "started_at", "ended_at", "status"]
    action_permissions = {
        # Approvers, operators, editors and admins (who may approve is granted on its own).
        "signal": perms.SIGNAL_EXECUTIONS,
        "list": perms.VIEW_EXECUTIONS,
        "retrieve": perms.VIEW_EXECUTIONS,
        "events": perms.VIEW_EXECUTIONS,
        "cancel": perms.CANCEL_EXECUTIONS,
        "pause": perms.CANCEL_EXECUTIONS,
        "resume": perms.START_EXECUTIONS,
        "redrive": perms.START_EXECUTIONS,
        "rerun": perms.START_EXECUTIONS,
        "input": perms.VIEW_EXECUTIONS,
        "step_value": perms.VIEW_EXECUTIONS,
    }

    @property
    def ordering(self) -> list[str]:
        """Newest first; a list of children in item order (their parent step, then place)."""
        params = getattr(getattr(self, "request", None), "query_params", {})
        if "parent" in params or "step" in params:
            return ["parent_step_id", "item_index"]
        return ["-created_at"]

    def get_queryset(self) -> QuerySet[Execution]:
        if not can(self.request, perms.VIEW_EXECUTIONS):
            return Execution.objects.none()
        if self.action == "list":
            params = self.request.query_params
            executions = Execution.objects.for_api_list()
            # Children are listed when asked for (?parent=, ?step=: ExecutionFilter).
            return executions if "parent" in params or "step" in params else executions.top_level()
        if self.action in ("events", "signal", "step_value"):
            return Execution.objects.only("id", "status")
        if self.action == "input":
            return Execution.objects.only("id", "input")
        return Execution.objects.for_api_detail()

    def get_serializer_class(self) -> type:
        return ExecutionSerializer if self.action == "list" else ExecutionDetailSerializer

    @extend_schema(
        summary="Cancel an execution",
        description="A running step is stopped by its worker within about a second.",
        request=None,
        responses={200: ExecutionDetailSerializer, **error_responses(*READ, 409)},
        examples=[
            ex.answer(
                "Cancelled",
                {**ex.QUEUED, "status": "CANCELLED", "cancel_requested": True, "current_task": ""},
            )
        ],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def cancel(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        return execution_detail(services.execution_cancel(execution_id=execution.id))

    @extend_schema(
        summary="Pause an execution",
        description="The step in flight finishes; the execution then waits as PAUSED.",
        request=None,
        responses={200: ExecutionDetailSerializer, **error_responses(*READ, 409)},
        examples=[ex.answer("Paused", {**ex.QUEUED, "status": "PAUSED", "pause_requested": True})],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def pause(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        return execution_detail(services.execution_pause(execution_id=execution.id))

    @extend_schema(
        summary="Resume a paused execution where it stopped",
        request=None,
        responses={200: ExecutionDetailSerializer, **error_responses(*READ, 409)},
        examples=[ex.answer("Resumed", ex.QUEUED)],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def resume(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        return execution_detail(services.execution_resume(execution_id=execution.id))

    @extend_schema(
        summary="Redrive a FAILED or CANCELLED execution from the step that stopped it",
        description="Same execution id; its history stays and finished steps are not run again.",
        request=None,
        responses={200: ExecutionDetailSerializer, **error_responses(*READ, 409)},
        examples=[ex.answer("Redriven", {**ex.QUEUED, "redrive_count": 1})],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def redrive(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        return execution_detail(services.execution_redrive(execution_id=execution.id))

    @extend_schema(
        summary="Start a new execution of the same flow version with the same input",
        request=None,
        responses={201: ExecutionDetailSerializer, **error_responses(*READ, 409)},
        examples=[
            ex.answer("Rerun", {**ex.QUEUED, "trigger": "rerun", "rerun_of": ex.EXECUTION_ID}, 201)
        ],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def rerun(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        rerun = services.execution_rerun(execution_id=execution.id, user=request.user)
        return execution_detail(rerun, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Send a signal to the step waiting for it: approve or reject",
        description="For a `wait_for_signal` step (a child execution's too: signal the child). "
        "Approve: `payload` (a JSON object) becomes the step's result; reject: the step fails "
        "and its failure route applies. The step becomes due at once; the answer is the step, "
        "still PENDING with `waiting.received` true until a worker runs it on; who answered, "
        "when, the decision, the comment and the payload stay on it (`signal`). 400 when "
        "`payload` is not an object (the wait stays open). 409 when the execution waits for "
        "no signal, for another one, or the signal already came. Needs the permission "
        "`flows.signal_execution` (approver, operator, editor, admin).",
        request=SignalSerializer,
        responses={200: StepSerializer, **error_responses(*WRITE, 404, 409)},
        examples=[
            OpenApiExample(
                "Approve",
                value={"name": "deploy", "decision": "approve", "payload": {"version": "1.2"}},
                request_only=True,
            ),
            OpenApiExample(
                "Reject",
                value={"name": "deploy", "decision": "reject", "comment": "not on a Friday"},
                request_only=True,
            ),
            ex.answer("Signalled", ex.SIGNALLED_STEP),
        ],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def signal(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        body = SignalSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        step = services.execution_signal(
            execution_id=execution.id, user=request.user, **body.validated_data
        )
        fresh = TaskRun.objects.select_related("fanout").get(pk=step.pk)
        return Response(StepSerializer(fresh).data)

    @extend_schema(
        summary="An execution's whole input",
        description="The input object as stored, whatever its size: lists carry only its "
        "`input_size` and this `input_url`, and the execution shows it cut past "
        "FLOW_SHOW_MAX_BYTES.",
        responses={200: OpenApiTypes.OBJECT, **error_responses(*READ)},
        examples=[ex.answer("Input", {"customer": 42, "items": [1, 2, 3]})],
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def input(self, request: Request, pk: str) -> Response:
        return Response(self.get_object().input)

    @extend_schema(
        summary="A step's whole result or parameters",
        description="The JSON as stored, whatever its size (the execution shows it cut past "
        "FLOW_SHOW_MAX_BYTES, with this url in the step's `truncated`). A step with no "
        "result answers null.",
        parameters=[
            OpenApiParameter("seq", int, OpenApiParameter.PATH, description="The step's seq."),
            OpenApiParameter("part", str, OpenApiParameter.PATH, enum=["result", "parameters"]),
        ],
        responses={200: OpenApiTypes.ANY, **error_responses(*READ)},
        examples=[ex.answer("Result", {"rows": [1, 2, 3]})],
    )
    @action(
        detail=True,
        methods=["get"],
        filter_backends=[],
        pagination_class=None,
        url_path=r"steps/(?P<seq>[0-9]+)/(?P<part>result|parameters)",
        url_name="step-value",
    )
    def step_value(self, request: Request, pk: str, seq: str, part: str) -> Response:
        execution = self.get_object()
        values = TaskRun.objects.filter(execution_id=execution.id, seq=int(seq)).values_list(
            part, flat=True
        )
        if not values:
            raise services.NotFound(f"execution {execution.id} has no step {seq}")
        return Response(values[0])

    @extend_schema(
        summary="Log lines of an execution after a seq, for live tails",
        description="Poll with `?after=<next_after>` until `finished` is true and `more` false.",
        parameters=[EventsQuerySerializer],
        responses={200: EventPageSerializer, **error_responses(400, *READ)},
        examples=[ex.answer("Lines", ex.EVENTS)],
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def events(self, request: Request, pk: str) -> Response:
        execution = self.get_object()
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after, limit = query.validated_data["after"], query.validated_data["limit"]
        rows = list(
            ExecutionEvent.objects.filter(execution_id=execution.id, id__gt=after)
            .select_related("task_run")
            .order_by("id")[: limit + 1]
        )
        page = rows[:limit]
        return Response(
            {
                "execution": execution.id,
                "status": execution.status,
                "finished": execution.is_terminal,
                "events": EventSerializer(page, many=True).data,
                "next_after": page[-1].id if page else after,
                "more": len(rows) > limit,
            }
        )
