"""The seed's endpoints, same paths, shapes and status codes, so its clients keep working."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, connection
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from flows import selectors, services
from flows.api import health
from flows.api.errors import error_response
from flows.api.permissions import (
    ADD_FLOWS,
    DELETE_EXECUTIONS,
    START_EXECUTIONS,
    require,
)
from flows.api.schema import error_responses
from flows.api.seed.serializers import (
    DeletedSerializer,
    ExecuteRequestSerializer,
    ExecutionStatusSerializer,
    FlowCreatedSerializer,
    HealthSerializer,
    status_document,
)

logger = logging.getLogger("flows.api")

SAMPLE_FLOW = {
    "id": "example_flow",
    "name": "Sample Data Pipeline",
    "start_task": "task1",
    "tasks": [
        {"name": "task1", "task_type": "fetch_data", "description": "Fetch data", "parameters": {}},
        {
            "name": "task2",
            "task_type": "process_data",
            "description": "Process data",
            "parameters": {},
        },
        {"name": "task3", "task_type": "store_data", "description": "Store data", "parameters": {}},
    ],
    "conditions": [
        {
            "name": "condition_task1_result",
            "source_task": "task1",
            "outcome": "success",
            "target_task_success": "task2",
            "target_task_failure": "end",
        },
        {
            "name": "condition_task2_result",
            "source_task": "task2",
            "outcome": "success",
            "target_task_success": "task3",
            "target_task_failure": "end",
        },
    ],
}

STATUS_EXAMPLE = OpenApiExample(
    "Completed",
    value={
        "execution_id": "6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01",
        "flow_id": "example_flow",
        "flow_name": "Sample Data Pipeline",
        "flow_version": 1,
        "status": "COMPLETED",
        "current_task": None,
        "completed_tasks": ["task1"],
        "executed_tasks": ["task1"],
        "task_results": {
            "task1": {
                "task_name": "task1",
                "status": "SUCCESS",
                "message": "Fetched 3 records",
                "data": {"records": [1, 2, 3]},
                "execution_time": 0.501,
                "timestamp": "2026-11-28T08:00:01+00:00",
                "error": None,
            }
        },
        "created_at": "2026-11-28T08:00:00+00:00",
        "started_at": "2026-11-28T08:00:00.100000+00:00",
        "ended_at": "2026-11-28T08:00:01+00:00",
        "error": None,
    },
    response_only=True,
    status_codes=[200],
)
_ERRORS = error_responses(400, 401, 403, 413, 415)
_READ_ERRORS = error_responses(401, 403, 404)


@contextmanager
def seed_not_found(execution_id: Any) -> Iterator[None]:
    """An unknown execution id answered in the seed's words: 404 "Flow execution <id> not
    found" (its clients may match on them), in the one error shape."""
    try:
        yield
    except services.NotFound:
        raise services.NotFound(f"Flow execution {execution_id} not found") from None


class FlowCreateView(APIView):
    permission_classes = [IsAuthenticated, require(ADD_FLOWS)]

    @extend_schema(
        operation_id="flow_create",
        summary="Store a flow (a new version if the id exists) and prepare an execution",
        description="The flow's current document again (compared as JSON, key order ignored) "
        "stores no version: the execution is of the current one and `new_version` is false.",
        request={"application/json": {"type": "object", "additionalProperties": True}},
        responses={200: FlowCreatedSerializer, **_ERRORS},
        examples=[
            OpenApiExample("Sample flow", value={"flow": SAMPLE_FLOW}, request_only=True),
            OpenApiExample(
                "Created",
                value={
                    "execution_id": "6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01",
                    "flow_id": "example_flow",
                    "flow_name": "Sample Data Pipeline",
                    "version": 1,
                    "new_version": True,
                    "status": "created",
                    "message": "Flow 'Sample Data Pipeline' created (version 1); "
                    "POST /flow/execute with this execution_id to run it",
                    "warnings": [],
                },
                response_only=True,
                status_codes=[200],
            ),
        ],
        tags=["seed"],
    )
    def post(self, request: Request) -> Response:
        try:
            version, stored, execution, definition = services.flow_create_with_execution(
                document=request.data, user=request.user
            )
        except services.InvalidFlow as exc:
            return error_response(
                f"Failed to create flow: {exc.message}",
                code=exc.code,
                http_status=status.HTTP_400_BAD_REQUEST,
                errors=exc.errors,
            )
        what = "created" if stored else "unchanged: the current version is this document"
        return Response(
            {
                "execution_id": str(execution.id),
                "flow_id": version.flow_id,
                "flow_name": definition.name,
                "version": version.version,
                "new_version": stored,
                "status": "created",
                "message": f"Flow '{definition.name}' {what} (version {version.version}); "
                "POST /flow/execute with this execution_id to run it",
                "warnings": [w.as_dict() for w in definition.warnings],
            }
        )


class FlowExecuteView(APIView):
    permission_classes = [IsAuthenticated, require(START_EXECUTIONS)]

    @extend_schema(
        operation_id="flow_execute",
        summary="Start a CREATED execution",
        request=ExecuteRequestSerializer,
        responses={
            200: ExecutionStatusSerializer,
            **_ERRORS,
            **error_responses(404, 409),
        },
        examples=[
            OpenApiExample(
                "Execute",
                value={"execution_id": "6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01"},
                request_only=True,
            ),
            STATUS_EXAMPLE,
        ],
        tags=["seed"],
    )
    def post(self, request: Request) -> Response:
        body = ExecuteRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        execution_id = body.validated_data["execution_id"]
        with seed_not_found(execution_id):
            execution = services.execution_start(
                execution_id=execution_id, input=body.validated_data.get("input")
            )
        return Response(status_document(execution))


class FlowStatusView(APIView):
    # Any signed-in user may poll a status (the hot path: no permission queries); the roles
    # govern what changes state.
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="flow_status",
        summary="The status document of an execution",
        responses={200: ExecutionStatusSerializer, **_READ_ERRORS},
        examples=[STATUS_EXAMPLE],
        tags=["seed"],
    )
    def get(self, request: Request, execution_id: str) -> Response:
        # Polled by clients: two queries built once per process (flows/sql/reads.py).
        with seed_not_found(execution_id):
            execution = selectors.execution_for_status(execution_id)
        return Response(status_document(execution, selectors.steps_for_status(execution)))


class FlowDeleteView(APIView):
    permission_classes = [IsAuthenticated, require(DELETE_EXECUTIONS)]

    @extend_schema(
        operation_id="flow_delete",
        summary="Delete an execution (a running one is cancelled first)",
        responses={200: DeletedSerializer, **_READ_ERRORS},
        examples=[
            OpenApiExample(
                "Deleted",
                value={
                    "message": "Flow execution 6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01 "
                    "deleted successfully"
                },
                response_only=True,
                status_codes=[200],
            )
        ],
        tags=["seed"],
    )
    def delete(self, request: Request, execution_id: str) -> Response:
        with seed_not_found(execution_id):
            execution = selectors.execution_get(execution_id)
            services.execution_delete(execution_id=execution.id)
        return Response({"message": f"Flow execution {execution.id} deleted successfully"})


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="health",
        summary="Liveness of the web process, its database and the worker clusters",
        description="200 while the database answers, whatever the workers do: `status` is "
        "`healthy` (a worker cluster is alive), `starting` (none has reported yet, within "
        "FLOW_HEALTH_STARTING_SECONDS of the web process starting) or `degraded` (none is "
        "reporting); `message` says what to do. 503 `unhealthy` when the database is down.",
        responses={200: HealthSerializer, 503: HealthSerializer},
        examples=[
            OpenApiExample(
                "Healthy",
                value={
                    "status": "healthy",
                    "timestamp": "2026-11-28T08:00:00+00:00",
                    "database": "ok",
                    "workers": 2,
                    "clusters": [
                        {
                            "id": "0c6b1f0e-9a01-4a8e-9d7e-6f0c1a555d2e",
                            "name": "sixteen-nitrogen-hawaii-lion",
                            "host": "worker-1",
                            "status": "Idle",
                            "processes": 2,
                            "started_at": "2026-11-28T07:00:00+00:00",
                            "last_seen": "2026-11-28T07:59:59+00:00",
                        }
                    ],
                    "message": "2 worker processes in 1 cluster",
                },
                response_only=True,
                status_codes=[200],
            ),
            OpenApiExample(
                "Starting",
                value={
                    "status": "starting",
                    "timestamp": "2026-11-28T08:00:00+00:00",
                    "database": "ok",
                    "workers": 0,
                    "clusters": [],
                    "message": f"no worker cluster has reported yet; {health.HOW_TO_START}",
                },
                response_only=True,
                status_codes=[200],
            ),
        ],
        tags=["seed"],
    )
    def get(self, request: Request) -> Response:
        now = timezone.now().isoformat()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError as exc:
            logger.error("health: database unreachable: %s", exc)
            down = {"workers": 0, "clusters": [], "message": "the database is unreachable"}
            return Response(
                {"status": "unhealthy", "timestamp": now, "database": f"error: {exc}", **down},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        report = health.workers_report()  # status, workers, clusters, message
        return Response(
            {"status": report.pop("status"), "timestamp": now, "database": "ok", **report}
        )
