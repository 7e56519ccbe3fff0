from django.urls import path

from flows.metrics import views

urlpatterns = [path("metrics", views.metrics, name="metrics")]
