"""URLs of the operator pages (mounted at the site root)."""

from django.urls import path

from flows.web.views import alerts, builder, controls, executions, flows, home, limits, secrets

urlpatterns = [
    path("", home.home, name="home"),
    path("favicon.ico", home.favicon, name="favicon"),
    path("flows/", flows.flow_list, name="flow_list"),
    path("flows/new", builder.flow_new, name="flow_new"),
    path("flows/builder/task-fields", builder.builder_task_fields, name="builder_task_fields"),
    path("flows/<slug:flow_id>/", flows.flow_detail, name="flow_detail"),
    path("flows/<slug:flow_id>/edit", builder.flow_edit, name="flow_edit"),
    path("flows/<slug:flow_id>/run", flows.flow_run, name="flow_run"),
    path("flows/<slug:flow_id>/schedule", flows.flow_schedule, name="flow_schedule"),
    path("flows/<slug:flow_id>/delete", flows.flow_delete, name="flow_delete"),
    path("flows/<slug:flow_id>/webhooks", flows.flow_webhooks, name="flow_webhooks"),
    path("flows/<slug:flow_id>/v<int:version>/", flows.flow_version, name="flow_version"),
    path("flows/<slug:flow_id>/v<int:version>/export", flows.flow_export, name="flow_export"),
    path("limits/", limits.limit_list, name="limit_list"),
    path("secrets/", secrets.secret_list, name="secret_list"),
    path("secrets/<str:name>/", secrets.secret_replace, name="secret_replace"),
    path("secrets/<str:name>/delete", secrets.secret_delete, name="secret_delete"),
    path("notifications/", alerts.notification_list, name="notification_list"),
    path("channels/<int:channel_id>/test", alerts.channel_test, name="channel_test"),
    path("executions/", executions.execution_list, name="execution_list"),
    path("executions/delete", executions.execution_bulk_delete, name="execution_bulk_delete"),
    path("executions/<uuid:execution_id>/", executions.execution_detail, name="execution_detail"),
    path("executions/<uuid:execution_id>/live", executions.execution_live, name="execution_live"),
    path(
        "executions/<uuid:execution_id>/signal",
        controls.execution_signal,
        name="execution_signal",
    ),
    path(
        "executions/<uuid:execution_id>/steps/<int:seq>/children",
        executions.execution_children,
        name="execution_children",
    ),
    path(
        "executions/<uuid:execution_id>/input.json",
        executions.execution_input,
        name="execution_input",
    ),
    path(
        "executions/<uuid:execution_id>/steps/<int:seq>/result.json",
        executions.execution_step_result,
        name="execution_step_result",
    ),
    path(
        "executions/<uuid:execution_id>/<str:action>",
        controls.execution_action,
        name="execution_action",
    ),
]
