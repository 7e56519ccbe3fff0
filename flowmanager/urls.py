from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("", include("flows.web.urls")),
    path("", include("flows.api.urls")),
    path("", include("flows.metrics.urls")),
    path("api/", include("flows.api.urls_resource")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

# URLs under the API that match no route answer in the API's one error shape.
handler404 = "flows.api.errors.page_not_found"
handler500 = "flows.api.errors.server_error"
