from django.urls import path

from flows.api import seed

urlpatterns = [
    path("flow/create", seed.FlowCreateView.as_view(), name="flow-create"),
    path("flow/execute", seed.FlowExecuteView.as_view(), name="flow-execute"),
    path("flow/<str:execution_id>/status", seed.FlowStatusView.as_view(), name="flow-status"),
    path("flow/<str:execution_id>", seed.FlowDeleteView.as_view(), name="flow-delete"),
    path("health", seed.HealthView.as_view(), name="health"),
]
