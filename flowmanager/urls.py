from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularSwaggerView

from flows.api.errors import no_endpoint
from flows.api.hooks import receive
from flows.api.schema import SchemaView

urlpatterns = [
    path("", include("flows.web.urls")),
    path("", include("flows.api.seed.urls")),
    path("", include("flows.metrics.urls")),
    path("api/", include("flows.api.resource.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/schema", SchemaView.as_view()),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    # Webhook deliveries: no login, the slug and the signature are the credentials.
    path("hooks/<str:slug>", receive, name="webhook_receive"),
    # Last: any other URL under the API answers 404 in the API's one error shape, also under
    # DEBUG (where handler404 is not used) and for any method (no APPEND_SLASH redirect).
    re_path(r"^(?:api|flow|health|hooks)(?:/.*)?$", no_endpoint),
]

# URLs outside the API that match no route; a JSON 500 under the API.
handler404 = "flows.api.errors.page_not_found"
handler500 = "flows.api.errors.server_error"
