"""The resource API's routes, included under ``/api/`` by flowmanager/urls.py."""

from rest_framework.routers import DefaultRouter

from flows.api.viewsets import ExecutionViewSet, FlowViewSet, TaskTypeViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("flows", FlowViewSet, basename="flow")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("task-types", TaskTypeViewSet, basename="task-type")

urlpatterns = router.urls
