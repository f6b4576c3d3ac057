from django.urls import path

from webapp.jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("new/estimate/", views.job_estimate, name="estimate"),
    path("<int:job_id>/", views.job_detail, name="detail"),
    path("<int:job_id>/cancel/", views.job_cancel, name="cancel"),
    path("<int:job_id>/retry/", views.job_retry, name="retry"),
    path("notifications/", views.notification_list, name="notifications"),
    path("teachers/", views.teacher_list, name="teachers"),
    path("teachers/new/", views.teacher_create, name="teacher-create"),
    path("teachers/<int:teacher_id>/", views.teacher_edit, name="teacher-edit"),
    path("teachers/<int:teacher_id>/delete/", views.teacher_delete, name="teacher-delete"),
    path("teachers/<int:teacher_id>/test/", views.teacher_test, name="teacher-test"),
]
