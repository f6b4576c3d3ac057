"""`/v1/…`: the OpenAI-compatible API (the official clients take `base_url=https://<host>/v1`)."""

from django.urls import path

from webapp.api import openai_compat

app_name = "openai"
urlpatterns = [
    path("models", openai_compat.model_list, name="models"),
    path("models/<path:model>", openai_compat.model_detail, name="model"),
    path("chat/completions", openai_compat.chat_completions, name="chat-completions"),
    path("completions", openai_compat.completions, name="completions"),
]
