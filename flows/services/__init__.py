"""Every write the API, the operator pages, the admin and the commands make goes through here.

One module per entity (``flows``, ``executions`` and their ``controls``, ``schedules``,
``retention``, ``secrets``), the refusals they raise in ``errors``. Callers import the package
and use the names below (``from flows import services; services.execution_start(...)``), never the
modules. Reads that more than one face needs are in ``flows.selectors``.
"""

from flows.definition import FieldError
from flows.services.controls import (
    SIGNAL_DECISIONS,
    execution_cancel,
    execution_pause,
    execution_redrive,
    execution_resume,
    execution_signal,
)
from flows.services.ends import handle_ends, on_end
from flows.services.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidFlow,
    InvalidInput,
    NotFound,
    ServiceError,
    check_storable,
)
from flows.services.executions import (
    body_fingerprint,
    checked_input,
    execution_create,
    execution_delete,
    execution_rerun,
    execution_run_inline,
    execution_start,
    execution_submit,
    executions_reap,
    flow_create_with_execution,
    flow_input_check,
)
from flows.services.flows import (
    canonical_json,
    flow_create,
    flow_delete,
    flow_store,
    flow_update,
    given_flow_id,
    validate_flow,
)
from flows.services.limits import limit_create, limit_delete, limit_update, limit_usage
from flows.services.retention import (
    PURGE_BATCH_SIZE,
    PURGE_JOB,
    PURGE_SCHEDULE_NAME,
    executions_purge,
    purge_schedule_sync,
)
from flows.services.schedules import (
    SCHEDULE_FUNC,
    cron_error,
    flow_run_scheduled,
    flow_schedule_delete,
    flow_schedule_set,
)
from flows.services.secrets import (
    NoSecretKeys,
    UnreadableSecrets,
    secret_create,
    secret_delete,
    secret_describe,
    secret_keys_rotate,
    secret_problems,
    secret_replace,
)

__all__ = [
    "PURGE_BATCH_SIZE",
    "PURGE_JOB",
    "PURGE_SCHEDULE_NAME",
    "SCHEDULE_FUNC",
    "SIGNAL_DECISIONS",
    "Conflict",
    "FieldError",
    "IdempotencyConflict",
    "InvalidFlow",
    "InvalidInput",
    "NoSecretKeys",
    "NotFound",
    "ServiceError",
    "UnreadableSecrets",
    "body_fingerprint",
    "canonical_json",
    "check_storable",
    "checked_input",
    "cron_error",
    "execution_cancel",
    "execution_create",
    "execution_delete",
    "execution_pause",
    "execution_redrive",
    "execution_rerun",
    "execution_resume",
    "execution_run_inline",
    "execution_signal",
    "execution_start",
    "execution_submit",
    "executions_purge",
    "executions_reap",
    "flow_create",
    "flow_create_with_execution",
    "flow_delete",
    "flow_input_check",
    "flow_run_scheduled",
    "flow_schedule_delete",
    "flow_schedule_set",
    "flow_store",
    "flow_update",
    "given_flow_id",
    "handle_ends",
    "limit_create",
    "limit_delete",
    "limit_update",
    "limit_usage",
    "on_end",
    "purge_schedule_sync",
    "secret_create",
    "secret_delete",
    "secret_describe",
    "secret_keys_rotate",
    "secret_problems",
    "secret_replace",
    "validate_flow",
]
