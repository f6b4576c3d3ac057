from django.urls import path

from webapp.api import views

app_name = "api"
urlpatterns = [
    path("organization", views.organization, name="organization"),
    path("tokens", views.token_list, name="tokens"),
    path("tokens/<int:token_id>", views.token_detail, name="token"),
]
