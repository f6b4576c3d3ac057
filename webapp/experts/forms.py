"""Forms of the experts pages: the mixture's router settings, the "try a query" box, publishing."""

from __future__ import annotations

import math
from typing import Any

from django import forms

from webapp.experts.models import Mixture


class MixtureForm(forms.ModelForm):
    """The router settings of the org's mixture (the engine validates the same ranges)."""

    top_k = forms.IntegerField(
        min_value=1,
        max_value=4,
        label="Experts per query (top-k)",
        help_text=Mixture._meta.get_field("top_k").help_text,
    )
    temperature = forms.FloatField(
        label="Temperature",
        help_text=Mixture._meta.get_field("temperature").help_text,
        widget=forms.NumberInput(attrs={"step": "any", "min": "0.001"}),
    )
    threshold = forms.FloatField(
        min_value=-1.0,
        max_value=1.0,
        label="Off-topic threshold (cosine)",
        help_text=Mixture._meta.get_field("threshold").help_text,
        widget=forms.NumberInput(attrs={"step": "any"}),
    )

    class Meta:
        model = Mixture
        fields = ["top_k", "temperature", "threshold", "fallback_to_base"]
        labels = {"fallback_to_base": "Send off-topic queries to the base model"}

    def clean_temperature(self) -> float:
        value = self.cleaned_data["temperature"]
        # FloatField accepts "inf"/"nan" spelled out; neither is a temperature.
        if not math.isfinite(value) or value <= 0:
            raise forms.ValidationError("The temperature must be a number above 0.")
        if value > 100:
            raise forms.ValidationError("The temperature must be at most 100.")
        return float(value)

    def clean_threshold(self) -> float:
        value = self.cleaned_data["threshold"]
        if not math.isfinite(value):
            raise forms.ValidationError("The threshold must be a number between -1 and 1.")
        return float(value)


class TryQueryForm(forms.Form):
    query = forms.CharField(
        max_length=4000,
        label="Try a query",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "How many days of leave do I get?"}),
        help_text="Shows which experts the router picks for it (nothing is generated).",
    )


class PublishForm(forms.Form):
    share_samples = forms.BooleanField(
        required=False,
        label="Also share the Q&A data it was taught, its best and worst answers and its training log",
    )

    def __init__(self, *args: Any, recipe: str = "qa", has_examples: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if recipe != "qa":  # a kd expert was taught the corpus text itself, never shared: only its log is extra,
            # and the best and worst answers of an evaluation set its job was scored on
            label = "Also share its training log"
            if has_examples:
                label += " and its best and worst answers on the evaluation questions"
            self.fields["share_samples"].label = label

    def flag(self) -> bool:
        data: dict[str, Any] = self.cleaned_data if self.is_valid() else {}
        return bool(data.get("share_samples"))
