"""Every write the API, the operator pages, the admin and the commands make goes through here.

One module per entity (``flows``, ``executions`` and their ``controls``, ``schedules`` and
``backfills``, ``retention``, ``secrets``), what follows an execution's end in ``ends`` (with
its handlers: ``triggers``, the buffered slots of ``schedules``, ``backfills``), the refusals
they raise in ``errors``. Callers import the package
and use the names below (``from flows import services; services.execution_start(...)``), never the
modules. Reads that more than one face needs are in ``flows.selectors``.
"""

from flows.definition import FieldError
from flows.services.alerts import (
    alerts_check,
    channel_create,
    channel_delete,
    channel_secret,
    channel_test,
    channel_update,
    handler_input,
    notify_webhook_refused,
    rule_create,
    rule_delete,
    rule_update,
)
from flows.services.backfills import MAX_SLOTS as BACKFILL_MAX_SLOTS
from flows.services.backfills import SlotPlan, backfill_create, backfill_plan
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
    BulkItem,
    body_fingerprint,
    checked_input,
    execution_create,
    execution_delete,
    execution_rerun,
    execution_run_inline,
    execution_start,
    execution_submit,
    executions_reap,
    executions_start,
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
from flows.services.notifications import notifications_send
from flows.services.retention import (
    PURGE_BATCH_SIZE,
    PURGE_JOB,
    PURGE_SCHEDULE_NAME,
    executions_purge,
    purge_schedule_sync,
)
from flows.services.schedules import (
    MAX_CATCHUP_WINDOW,
    SCHEDULE_FUNC,
    cron_error,
    cron_slots,
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
from flows.services.triggers import execution_result

__all__ = [
    "BACKFILL_MAX_SLOTS",
    "MAX_CATCHUP_WINDOW",
    "PURGE_BATCH_SIZE",
    "PURGE_JOB",
    "PURGE_SCHEDULE_NAME",
    "SCHEDULE_FUNC",
    "SIGNAL_DECISIONS",
    "BulkItem",
    "Conflict",
    "FieldError",
    "IdempotencyConflict",
    "InvalidFlow",
    "InvalidInput",
    "NoSecretKeys",
    "NotFound",
    "ServiceError",
    "SlotPlan",
    "UnreadableSecrets",
    "alerts_check",
    "backfill_create",
    "backfill_plan",
    "body_fingerprint",
    "canonical_json",
    "channel_create",
    "channel_delete",
    "channel_secret",
    "channel_test",
    "channel_update",
    "check_storable",
    "checked_input",
    "cron_error",
    "cron_slots",
    "execution_cancel",
    "execution_create",
    "execution_delete",
    "execution_pause",
    "execution_redrive",
    "execution_rerun",
    "execution_result",
    "execution_resume",
    "execution_run_inline",
    "execution_signal",
    "execution_start",
    "execution_submit",
    "executions_purge",
    "executions_reap",
    "executions_start",
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
    "handler_input",
    "notifications_send",
    "notify_webhook_refused",
    "on_end",
    "purge_schedule_sync",
    "rule_create",
    "rule_delete",
    "rule_update",
    "secret_create",
    "secret_delete",
    "secret_describe",
    "secret_keys_rotate",
    "secret_problems",
    "secret_replace",
    "validate_flow",
]
