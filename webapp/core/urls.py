from django.urls import path

from webapp.core import views

app_name = "core"
urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("health.json", views.health_json, name="health-json"),
]
