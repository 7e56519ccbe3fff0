"""URLs of the operator pages (mounted at the site root)."""

from django.urls import path

from flows.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("flows/", views.flow_list, name="flow_list"),
    path("flows/new", views.flow_new, name="flow_new"),
    path("flows/builder/task-fields", views.builder_task_fields, name="builder_task_fields"),
    path("flows/<slug:flow_id>/", views.flow_detail, name="flow_detail"),
    path("flows/<slug:flow_id>/edit", views.flow_edit, name="flow_edit"),
    path("flows/<slug:flow_id>/run", views.flow_run, name="flow_run"),
    path("flows/<slug:flow_id>/schedule", views.flow_schedule, name="flow_schedule"),
    path("flows/<slug:flow_id>/delete", views.flow_delete, name="flow_delete"),
    path("flows/<slug:flow_id>/v<int:version>/", views.flow_version, name="flow_version"),
    path("flows/<slug:flow_id>/v<int:version>/export", views.flow_export, name="flow_export"),
    path("executions/", views.execution_list, name="execution_list"),
    path("executions/delete", views.execution_bulk_delete, name="execution_bulk_delete"),
    path("executions/<uuid:execution_id>/", views.execution_detail, name="execution_detail"),
    path("executions/<uuid:execution_id>/live", views.execution_live, name="execution_live"),
    path("executions/<uuid:execution_id>/signal", views.execution_signal, name="execution_signal"),
    path(
        "executions/<uuid:execution_id>/steps/<int:seq>/children",
        views.execution_children,
        name="execution_children",
    ),
    path(
        "executions/<uuid:execution_id>/input.json", views.execution_input, name="execution_input"
    ),
    path(
        "executions/<uuid:execution_id>/steps/<int:seq>/result.json",
        views.execution_step_result,
        name="execution_step_result",
    ),
    path(
        "executions/<uuid:execution_id>/<str:action>",
        views.execution_action,
        name="execution_action",
    ),
]
