from django.urls import path

from webapp.experts import playground, views

app_name = "experts"
urlpatterns = [
    path("", views.expert_list, name="list"),
    path("catalog/", views.catalog, name="catalog"),
    path("catalog/<int:expert_id>/include/", views.catalog_include, name="include"),
    path("catalog/<int:expert_id>/exclude/", views.catalog_exclude, name="exclude"),
    path("mixture/", views.mixture, name="mixture"),
    path("mixture/try/", views.mixture_try, name="mixture-try"),
    # The playground is the lead's module (webapp/experts/playground.py); its templates name these two routes.
    path("playground/", playground.playground, name="playground"),
    path("playground/stream/", playground.playground_stream, name="playground-stream"),
    path("<int:expert_id>/", views.expert_detail, name="detail"),
    path("<int:expert_id>/download/", views.expert_download, name="download"),
    path("<int:expert_id>/status/", views.expert_status, name="status"),
    path("<int:expert_id>/versions/<int:number>/activate/", views.expert_rollback, name="rollback"),
    path("<int:expert_id>/publish/", views.expert_publish, name="publish"),
    path("<int:expert_id>/withdraw/", views.expert_withdraw, name="withdraw"),
    path("<int:expert_id>/delete/", views.expert_delete, name="delete"),
]
