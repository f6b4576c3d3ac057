from django.urls import path

from webapp.corpora import views

app_name = "corpora"
urlpatterns = [
    path("", views.corpus_list, name="list"),
    path("new/", views.corpus_create, name="create"),
    path("<int:corpus_id>/", views.corpus_detail, name="detail"),
    path("<int:corpus_id>/files/", views.file_upload, name="file-upload"),
    path("<int:corpus_id>/files/start/", views.file_start, name="file-start"),
    path("<int:corpus_id>/files/<int:file_id>/content/", views.file_content, name="file-content"),
    path("<int:corpus_id>/files/<int:file_id>/remove/", views.file_remove, name="file-remove"),
    path("<int:corpus_id>/files/<int:file_id>/csv-column/", views.file_csv_column, name="file-csv-column"),
    path("<int:corpus_id>/ingest/", views.corpus_ingest, name="ingest"),
    path("<int:corpus_id>/chunks/", views.corpus_chunks, name="chunks"),
    path("<int:corpus_id>/examples/", views.corpus_examples, name="examples"),
    path("<int:corpus_id>/delete/", views.corpus_delete, name="delete"),
]
