"""``/api/flows/``: flows, their versions, dry-run validation, starting executions, the
cron schedule and the webhooks (flows/api/resource/webhooks.py). (Scope and permissions:
flows/api/resource/__init__.py.)"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.request import Request
from rest_framework.response import Response

from flows import selectors, services
from flows.api import permissions as perms
from flows.api.resource import examples as ex
from flows.api.resource.base import ResourceViewSet, can, execution_detail
from flows.api.resource.serializers import (
    FLOW_DOCUMENT_SCHEMA,
    BackfillRequestSerializer,
    BackfillSerializer,
    BulkStartedSerializer,
    BulkStartSerializer,
    ExecutionDetailSerializer,
    FlowDetailSerializer,
    FlowSerializer,
    FlowVersionDetailSerializer,
    FlowVersionSerializer,
    FlowWrittenSerializer,
    InputCheckedSerializer,
    ScheduleSerializer,
    StartExecutionSerializer,
    ValidationReportSerializer,
)
from flows.api.resource.webhooks import WebhookActions
from flows.api.schema import READ, WRITE, error_responses
from flows.models import Flow, FlowVersion

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        "Repeating a start with the same key (same user, same flow) and the same body returns "
        "the execution the first one made, with 200, instead of starting another; the same key "
        "with a different body is a 422 (idempotency_conflict). At most 200 characters."
    ),
)


def idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not key.isprintable():
        raise ValidationError({"Idempotency-Key": ["must be printable text"]})
    return key


def bulk_items(body: dict[str, Any]) -> list[services.BulkItem]:
    """A bulk start's items as the service takes them, each named as the request has it."""
    if "inputs" in body:
        return [services.BulkItem(f"inputs[{n}]", value) for n, value in enumerate(body["inputs"])]
    items = []
    for n, item in enumerate(body["items"]):
        if not isinstance(item, dict) or set(item) - {"input", "idempotency_key"}:
            raise ValidationError(
                {f"items[{n}]": ["must be an object of input and idempotency_key"]}
            )
        items.append(
            services.BulkItem(
                f"items[{n}]",
                item.get("input"),
                item.get("idempotency_key", ""),
                input_at=".input",
            )
        )
    return items


@extend_schema(tags=["flows"])
@extend_schema_view(
    list=extend_schema(
        summary="List flows",
        description="Search matches id and name; order by id, name, version, created_at or "
        "updated_at (prefix - for descending).",
        responses={200: FlowSerializer(many=True), **error_responses(401, 403, 404)},
        examples=[ex.answer("Flows", ex.FLOW_ROW)],
    ),
    retrieve=extend_schema(
        summary="A flow with its latest document",
        responses={200: FlowDetailSerializer, **error_responses(*READ)},
        examples=[ex.answer("Flow", ex.FLOW)],
    ),
)
class FlowViewSet(WebhookActions, ResourceViewSet):
    """Flows and their versions; storing a document makes a new version, never an edit."""

    noun = "flow"
    queryset = Flow.objects.all()
    serializer_class = FlowSerializer
    filter_backends = [SearchFilter, OrderingFilter]
    search_fields = ["id", "name"]
    ordering_fields = ["id", "name", "version", "created_at", "updated_at"]
    ordering = ["id"]
    action_permissions = {
        "list": perms.VIEW_FLOWS,
        "retrieve": perms.VIEW_FLOWS,
        "versions": perms.VIEW_FLOWS,
        "version": perms.VIEW_FLOWS,
        "validate": perms.VIEW_FLOWS,
        "validate_as_id": perms.VIEW_FLOWS,
        "create": perms.ADD_FLOWS,
        "update": perms.CHANGE_FLOWS,
        "destroy": perms.DELETE_FLOWS,
        "start": perms.START_EXECUTIONS,
        "start_bulk": perms.START_EXECUTIONS,
        "validate_input": perms.VIEW_FLOWS,
        "schedule": perms.VIEW_FLOWS,
        "set_schedule": perms.CHANGE_FLOWS,
        "delete_schedule": perms.CHANGE_FLOWS,
        "backfill": perms.START_EXECUTIONS,
        **WebhookActions.webhook_permissions,
    }

    def get_queryset(self) -> QuerySet[Flow]:
        if not can(self.request, perms.VIEW_FLOWS):
            return Flow.objects.none()
        if self.action == "list":
            return Flow.objects.defer("definition")
        return Flow.objects.all()

    def get_serializer_class(self) -> type:
        return FlowDetailSerializer if self.action == "retrieve" else FlowSerializer

    def _written(self, version: FlowVersion, stored: bool, http_status: int) -> Response:
        warnings = services.validate_flow(version.definition).warnings
        context = {"warnings": [w.as_dict() for w in warnings], "new_version": stored}
        data = FlowWrittenSerializer(version.flow, context=context).data
        return Response(data, status=http_status)

    @extend_schema(
        summary="Create a flow (a new version when its id exists)",
        description="201 when a version was stored. The flow's current document again "
        "(compared as JSON, key order ignored) stores nothing: 200 with that version and "
        "`new_version: false`.",
        request={"application/json": FLOW_DOCUMENT_SCHEMA},
        responses={
            201: FlowWrittenSerializer,
            200: OpenApiResponse(
                FlowWrittenSerializer, description="The current document again: nothing stored."
            ),
            **error_responses(*WRITE),
        },
        examples=[
            OpenApiExample("Two tasks", value=ex.DOCUMENT, request_only=True),
            ex.answer("Stored", ex.FLOW_WRITTEN, 201),
            ex.answer("Unchanged", {**ex.FLOW_WRITTEN, "new_version": False}, 200),
        ],
    )
    def create(self, request: Request) -> Response:
        version, stored = services.flow_store(document=request.data, user=request.user)
        return self._written(
            version, stored, status.HTTP_201_CREATED if stored else status.HTTP_200_OK
        )

    @extend_schema(
        summary="Store a new version of a flow",
        description="The document may leave out `id`; one naming another flow is a 400. "
        "The flow's current document again stores nothing (`new_version: false`).",
        request={"application/json": FLOW_DOCUMENT_SCHEMA},
        responses={200: FlowWrittenSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("Two tasks", value=ex.DOCUMENT, request_only=True),
            ex.answer("Stored", ex.FLOW_WRITTEN),
        ],
    )
    def update(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        version, stored = services.flow_update(
            flow_id=flow.id, document=request.data, user=request.user
        )
        return self._written(version, stored, status.HTTP_200_OK)

    @extend_schema(
        summary="Delete a flow with its versions and executions",
        responses={
            204: OpenApiResponse(description="Deleted."),
            **error_responses(*READ, 409),
        },
    )
    def destroy(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        services.flow_delete(flow_id=flow.id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Check a flow document without storing it",
        description="Always 200 for a JSON body: `valid` says whether it would be stored, "
        "`errors` why not, `warnings` what would run never. `flow_id` is the `id` the body "
        "gave (also when invalid), null when it gave no id as text.",
        request={"application/json": FLOW_DOCUMENT_SCHEMA},
        responses={200: ValidationReportSerializer, **error_responses(*WRITE)},
        examples=[
            OpenApiExample("Two tasks", value=ex.DOCUMENT, request_only=True),
            OpenApiExample(
                "Invalid",
                value={
                    "valid": False,
                    "flow_id": "nightly_etl",
                    "errors": [
                        {"field": "tasks[0].task_type", "message": "unknown task type 'fetch'"}
                    ],
                    "warnings": [],
                },
                response_only=True,
            ),
        ],
    )
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None)
    def validate(self, request: Request) -> Response:
        try:
            definition = services.validate_flow(request.data)
        except services.InvalidFlow as exc:
            report = {
                "valid": False,
                "flow_id": services.given_flow_id(request.data),
                "errors": exc.errors,
                "warnings": [],
            }
        else:
            warnings = [w.as_dict() for w in definition.warnings]
            report = {"valid": True, "flow_id": definition.id, "errors": [], "warnings": warnings}
        return Response(ValidationReportSerializer(report).data)

    @extend_schema(exclude=True)
    @validate.mapping.get
    @validate.mapping.put
    @validate.mapping.delete
    def validate_as_id(self, request: Request) -> Response:
        """``flows/validate/`` is the dry run, so GET/PUT/DELETE there mean a flow of that id.

        No flow can be addressed as "validate" here: answer as for any unknown flow (404)
        rather than 405, as ``/api/flows/{id}/`` documents.
        """
        raise services.NotFound(
            "no flow with id 'validate' here: /api/flows/validate/ is the dry run (POST)"
        )

    @extend_schema(
        summary="The versions of a flow, newest first",
        responses={200: FlowVersionSerializer(many=True), **error_responses(*READ)},
        examples=[ex.answer("Versions", ex.VERSION_ROW)],
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def versions(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        page = self.paginate_queryset(selectors.flow_version_list(flow=flow))
        return self.get_paginated_response(FlowVersionSerializer(page, many=True).data)

    @extend_schema(
        summary="One version of a flow, with its document",
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        responses={200: FlowVersionDetailSerializer, **error_responses(*READ)},
        examples=[ex.answer("Version", ex.VERSION)],
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<version>[0-9]+)",
        filter_backends=[],
        pagination_class=None,
    )
    def version(self, request: Request, pk: str, version: str) -> Response:
        flow = self.get_object()
        found = selectors.flow_version_get(flow_id=flow.id, version=int(version))
        return Response(FlowVersionDetailSerializer(found).data)

    @extend_schema(
        summary="Start an execution of the flow",
        description="Runs the latest version unless `version` is given. With an "
        "`Idempotency-Key`, a repeat answers 200 with the first execution; the same key with "
        "a different body is a 422.",
        parameters=[IDEMPOTENCY_KEY],
        request=StartExecutionSerializer,
        responses={
            201: ExecutionDetailSerializer,
            200: OpenApiResponse(
                ExecutionDetailSerializer, description="A repeat of an Idempotency-Key."
            ),
            **error_responses(*WRITE, 404, 409, 422),
        },
        examples=[
            OpenApiExample(
                "With input", value={"input": {"customer": 42}, "version": 1}, request_only=True
            ),
            ex.answer("Started", ex.QUEUED, 201),
            ex.answer("Repeated key", ex.QUEUED, 200),
        ],
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="executions",
        filter_backends=[],
        pagination_class=None,
    )
    def start(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        body = StartExecutionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = selectors.flow_version_get(
            flow_id=flow.id, version=body.validated_data.get("version")
        )
        execution, created = services.execution_submit(
            flow_version=version,
            user=request.user,
            input=body.validated_data.get("input"),
            idempotency_key=idempotency_key(request),
            request_fingerprint=services.body_fingerprint(request.data),
        )
        return execution_detail(
            execution, status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(
        summary="Start many executions of the flow at once",
        description="Up to `FLOW_BULK_MAX` (1,000) executions in one call, either "
        '`{"inputs": [{...}, ...]}` (one input object each) or `{"items": [{"input": {...}, '
        '"idempotency_key": "..."}, ...]}`; `version` as in the single start. Every item is '
        "checked first, as the single start checks its input: one bad item is a 400 listing "
        "each error at its item (`items[3].input/customer`, `inputs[3]/customer`), and "
        "nothing is started. Then all are written in one transaction, QUEUED with their "
        "first steps. The answer lists the executions in the items' order. An item whose "
        "`idempotency_key` this user already used for this flow answers the execution it "
        "started (`created: false`) when its body is the same (`input` and `version`, as a "
        "single start's body with that Idempotency-Key header), else the whole call is a 422. "
        "201 when any was started, 200 when every item was a repeat.",
        request=BulkStartSerializer,
        responses={
            201: BulkStartedSerializer,
            200: OpenApiResponse(
                BulkStartedSerializer, description="Every item repeated a used key."
            ),
            **error_responses(*WRITE, 404, 409, 422),
        },
        examples=[
            OpenApiExample(
                "Inputs",
                value={"inputs": [{"customer": 42}, {"customer": 43}]},
                request_only=True,
            ),
            OpenApiExample(
                "Items with keys",
                value={"items": [{"input": {"customer": 42}, "idempotency_key": "order-17"}]},
                request_only=True,
            ),
            ex.answer("Started", ex.BULK_STARTED, 201),
            ex.answer(
                "Every key repeated",
                {
                    "executions": [
                        {**row, "created": False} for row in ex.BULK_STARTED["executions"]
                    ]
                },
                200,
            ),
        ],
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="executions/bulk",
        filter_backends=[],
        pagination_class=None,
    )
    def start_bulk(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        body = BulkStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        number = body.validated_data.get("version")
        version = selectors.flow_version_get(flow_id=flow.id, version=number)
        started = services.executions_start(
            flow_version=version,
            items=bulk_items(body.validated_data),
            user=request.user,
            body_extra={"version": number} if number is not None else None,
        )
        base = reverse("execution-list").rstrip("/")  # the router's "/?" reverses bare
        # BulkStartedSerializer's shape, written directly: 1,000 rows through a serializer
        # cost more than writing them.
        executions = [
            {"id": str(e.id), "status_url": f"{base}/{e.id}/", "created": created}
            for e, created in started
        ]
        created = any(created for _, created in started)
        return Response(
            {"executions": executions},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        summary="Check an input against the flow's input_schema without starting anything",
        description="The body is the input itself (what the start endpoint takes as `input`). "
        "200 with the input an execution would start with (the schema's defaults filled in); "
        "400 (`invalid_input`) listing each error at its JSON Pointer into the input. "
        "Checks the latest version unless `?version=` is given.",
        parameters=[
            OpenApiParameter(
                "version", int, OpenApiParameter.QUERY, description="Flow version to check."
            )
        ],
        request={"application/json": {"type": "object", "additionalProperties": True}},
        responses={200: InputCheckedSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("Input", value={"customer_id": 42}, request_only=True),
            ex.answer("Valid", {"valid": True, "input": {"customer_id": 42, "region": "eu"}}),
            OpenApiExample(
                "Invalid",
                value={
                    "detail": "the input does not match the flow's input_schema: "
                    "/customer_id: required",
                    "code": "invalid_input",
                    "errors": [{"field": "/customer_id", "message": "required"}],
                },
                response_only=True,
                status_codes=["400"],
            ),
        ],
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="validate-input",
        filter_backends=[],
        pagination_class=None,
    )
    def validate_input(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        number = request.query_params.get("version")
        if number is not None and not (number.isdigit() and 0 < int(number) < 2**31):
            raise ValidationError({"version": ["must be a whole number, 1 or more"]})
        version = selectors.flow_version_get(
            flow_id=flow.id, version=int(number) if number else None
        )
        checked = services.flow_input_check(flow_version=version, input=request.data)
        return Response(InputCheckedSerializer({"valid": True, "input": checked}).data)

    # -- the flow's cron schedule -----------------------------------------------------------
    @extend_schema(
        summary="The flow's cron schedule",
        responses={200: ScheduleSerializer, **error_responses(*READ)},
        examples=[ex.answer("Schedule", ex.SCHEDULE)],
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def schedule(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        return Response(ScheduleSerializer(selectors.flow_schedule_get(flow=flow)).data)

    @extend_schema(
        summary="Create or change the flow's cron schedule (enabled: false pauses it)",
        request=ScheduleSerializer,
        responses={200: ScheduleSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample(
                "Every 15 minutes",
                value={"cron": "*/15 * * * *", "enabled": True, "input": {"region": "eu"}},
                request_only=True,
            ),
            ex.answer("Schedule", ex.SCHEDULE),
        ],
    )
    @schedule.mapping.put
    def set_schedule(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        body = ScheduleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        saved = services.flow_schedule_set(
            flow_id=flow.id,
            cron=body.validated_data["cron"],
            enabled=body.validated_data["enabled"],
            input=body.validated_data.get("input"),
            overlap=body.validated_data.get("overlap"),
            catchup=body.validated_data.get("catchup"),
            catchup_window_seconds=body.validated_data.get("catchup_window_seconds"),
        )
        return Response(ScheduleSerializer(saved).data)

    @extend_schema(
        summary="Delete the flow's cron schedule",
        request=None,
        responses={204: None, **error_responses(*READ)},
    )
    @schedule.mapping.delete
    def delete_schedule(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        services.flow_schedule_delete(flow_id=flow.id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # -- backfill ---------------------------------------------------------------------------
    @extend_schema(
        summary="Run the flow's cron slots between two times (or say what would run)",
        description="Each slot of the schedule's cron in [start, end]: `run` (never ran), "
        "`skip` (a run is going, or it ran and `reprocess` leaves it), `rerun` (it ran and "
        "`reprocess` is `failed` (FAILED, CANCELLED) or `all`). Runs use the flow's current "
        "version and the given input (else the schedule's), at most `max_active` at once. "
        f"At most {services.BACKFILL_MAX_SLOTS} slots: more is a 400 at `end`. 200 for a "
        "dry run, 201 when runs were made.",
        request=BackfillRequestSerializer,
        responses={
            201: BackfillSerializer,
            200: OpenApiResponse(BackfillSerializer, description="A dry run: nothing made."),
            **error_responses(*WRITE, 404),
        },
        examples=[
            OpenApiExample(
                "Dry run of a day",
                value={
                    "start": "2026-11-01T00:00:00Z",
                    "end": "2026-11-01T23:59:59Z",
                    "dry_run": True,
                    "reprocess": "failed",
                },
                request_only=True,
            ),
            ex.answer("Backfill", ex.BACKFILL, 201),
            ex.answer("Dry run", ex.BACKFILL_DRY_RUN),
        ],
    )
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def backfill(self, request: Request, pk: str) -> Response:
        flow = self.get_object()
        body = BackfillRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        made, plans = services.backfill_create(
            flow_id=flow.id, user=request.user, **body.validated_data
        )
        counts = {action: 0 for action in ("run", "rerun", "skip")}
        for plan in plans:
            counts[plan.action] += 1
        data = {
            "backfill": made.id if made else None,
            "dry_run": made is None,
            "slots": [vars(plan) for plan in plans],
            "counts": counts,
        }
        answer = status.HTTP_200_OK if made is None else status.HTTP_201_CREATED
        return Response(BackfillSerializer(data).data, status=answer)
