from django.urls import path

from webapp.webhooks import views

app_name = "webhooks"

urlpatterns = [
    path("", views.endpoint_list, name="list"),
    path("<int:endpoint_id>/", views.endpoint_detail, name="detail"),
    path("<int:endpoint_id>/test/", views.send_test, name="test"),
    path("<int:endpoint_id>/roll-secret/", views.roll_secret, name="roll-secret"),
    path("<int:endpoint_id>/toggle/", views.toggle, name="toggle"),
    path("<int:endpoint_id>/delete/", views.delete, name="delete"),
    path("<int:endpoint_id>/deliveries/<int:delivery_id>/", views.delivery_detail, name="delivery"),
    path("<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver/", views.redeliver, name="redeliver"),
]
