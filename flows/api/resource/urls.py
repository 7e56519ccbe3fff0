"""The resource API's routes, included under ``/api/`` by flowmanager/urls.py."""

from rest_framework.routers import DefaultRouter

from flows.api.resource.alerts import AlertRuleViewSet, ChannelViewSet, NotificationViewSet
from flows.api.resource.executions import ExecutionViewSet
from flows.api.resource.flows import FlowViewSet
from flows.api.resource.limits import LimitViewSet
from flows.api.resource.secrets import SecretViewSet
from flows.api.resource.task_types import TaskTypeViewSet

router = DefaultRouter()
# Every route with or without its trailing slash: no APPEND_SLASH redirect (which loses a
# POST's body, and raises under DEBUG). The schema shows the slashed form.
router.trailing_slash = "/?"
router.include_root_view = False
router.register("flows", FlowViewSet, basename="flow")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("task-types", TaskTypeViewSet, basename="task-type")
router.register("secrets", SecretViewSet, basename="secret")
router.register("channels", ChannelViewSet, basename="channel")
router.register("alert-rules", AlertRuleViewSet, basename="alert-rule")
router.register("notifications", NotificationViewSet, basename="notification")
router.register("limits", LimitViewSet, basename="limit")

urlpatterns = router.urls
