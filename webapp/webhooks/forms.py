from __future__ import annotations

from typing import Any

from django import forms

from webapp.webhooks import services
from webapp.webhooks.models import SUBSCRIBABLE_EVENTS, WebhookEndpoint


class EndpointForm(forms.ModelForm):
    """The endpoint's URL (checked the way the server will send to it), what it is, and the events it wants."""

    url = forms.URLField(
        label="URL",
        max_length=2000,
        assume_scheme="https",
        help_text=WebhookEndpoint._meta.get_field("url").help_text,
    )
    events = forms.MultipleChoiceField(
        choices=[(event.value, event.label) for event in SUBSCRIBABLE_EVENTS],
        widget=forms.CheckboxSelectMultiple,
        initial=[event.value for event in SUBSCRIBABLE_EVENTS],
        help_text="A test event (ping) can be sent to any endpoint from its page.",
        error_messages={"required": "Choose at least one event."},
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "events"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["url"].widget.attrs.update({"placeholder": "https://", "inputmode": "url", "class": "url-input"})

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        refusal = services.check_url(url)
        if refusal:
            raise forms.ValidationError(refusal)
        return url

    def clean_events(self) -> list[str]:
        chosen = set(self.cleaned_data["events"])
        return [event.value for event in SUBSCRIBABLE_EVENTS if event.value in chosen]
