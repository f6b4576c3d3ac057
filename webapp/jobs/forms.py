"""Forms of the teachers and jobs pages (the REST API validates a new job with the same `JobForm`)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import MinValueValidator

from webapp.corpora.models import Corpus
from webapp.jobs import services
from webapp.jobs.models import SELF_REWARD_CHOICES, DistillationJob, Teacher
from webapp.tenants.models import Organization

CATALOG_PREFIXES = ("packaged:", "hf:")


def _local_path_allowed(value: str) -> bool:
    """A hub id (owner/name) is fine here; a local path must lie under one of the operator's MODEL_ROOTS."""
    if not value.startswith(("/", ".", "~")):
        return True
    path = Path(value).expanduser().resolve()
    return any(path.is_relative_to(Path(root).resolve()) for root in settings.MODEL_ROOTS)


EVAL_SET_MAX_BYTES = 20 * 2**20
EVAL_SET_MAX_LINES = 5_000


# ---------------------------------------------------------------- teachers


class TeacherForm(forms.ModelForm):
    """A catalog spec or an OpenAI-compatible endpoint. The API key is write-only: never rendered back."""

    base_url = forms.URLField(
        assume_scheme="https",
        max_length=500,
        required=False,
        label="Base URL",
        help_text="The OpenAI-compatible API root, e.g. https://api.openai.com/v1 or http://vllm.internal:8000/v1.",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=500,
        strip=True,
        # render_value=False: the stored key never travels back to the browser, not even encrypted.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; only its last 4 characters are ever shown. Leave empty to keep the saved key.",
    )
    clear_key = forms.BooleanField(label="Clear the saved key", required=False)

    class Meta:
        model = Teacher
        fields = [
            "name",
            "kind",
            "spec",
            "base_url",
            "model_name",
            "api_key",
            "clear_key",
            "price_input_per_million",
            "price_output_per_million",
        ]
        widgets = {"kind": forms.RadioSelect}
        labels = {
            "spec": "Model spec",
            "model_name": "Model name",
            "price_input_per_million": "Price per million input tokens (USD)",
            "price_output_per_million": "Price per million output tokens (USD)",
        }
        help_texts = {
            "spec": "Catalog teachers only: packaged:… (e.g. packaged:gemma3-270m) or hf:… (a directory under "
            "the server's MODEL_ROOTS).",
            "model_name": "Endpoint teachers only: the model name the endpoint serves.",
            "price_input_per_million": "Optional: used for cost estimates and the spend cap.",
        }

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.organization = organization
        for name in ("price_input_per_million", "price_output_per_million"):
            self.fields[name].validators.append(MinValueValidator(Decimal(0)))
            self.fields[name].widget.attrs["min"] = "0"
        if self.instance.api_key_last4:
            self.fields[
                "api_key"
            ].help_text = (
                f"Saved key: •••• {self.instance.api_key_last4}. Leave empty to keep it, type a new one to replace it."
            )
        else:
            del self.fields["clear_key"]  # nothing to clear

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        others = Teacher.objects.for_org(self.organization).filter(name__iexact=name).exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError("Your organization already has a teacher with this name.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if kind == Teacher.Kind.CATALOG:
            spec = (cleaned.get("spec") or "").strip()
            if not spec:
                self.add_error("spec", "A catalog teacher needs a model spec.")
            elif not spec.startswith(CATALOG_PREFIXES) or spec in CATALOG_PREFIXES:
                self.add_error("spec", "The spec must start with packaged: or hf: (e.g. packaged:gemma3-270m).")
            elif spec.startswith("hf:") and not _local_path_allowed(spec[3:]):
                roots = ", ".join(str(root) for root in settings.MODEL_ROOTS) or "none configured"
                self.add_error("spec", f"A local model must be under a directory the operator allows ({roots}).")
            cleaned["spec"] = spec
            # A catalog teacher has no endpoint: whatever the endpoint fields held is dropped (the key too).
            cleaned.update(base_url="", model_name="", price_input_per_million=None, price_output_per_million=None)
        elif kind == Teacher.Kind.ENDPOINT:
            cleaned["spec"] = ""
            base_url = cleaned.get("base_url")
            if not base_url and "base_url" not in self.errors:
                self.add_error("base_url", "An endpoint teacher needs the base URL of its API.")
            elif base_url:
                try:
                    services.check_endpoint_url(base_url)
                except services.JobError as error:
                    self.add_error("base_url", str(error))
            if not (cleaned.get("model_name") or "").strip():
                self.add_error("model_name", "An endpoint teacher needs the model name the endpoint serves.")
        return cleaned

    @property
    def key_change(self) -> str | None:
        """How the API key changes on save: "set", "cleared", or None (kept). Valid forms only."""
        kind = self.cleaned_data["kind"]
        had_key = bool(self.instance.api_key_encrypted)
        if kind == Teacher.Kind.CATALOG or self.cleaned_data.get("clear_key"):
            return "cleared" if had_key else None
        return "set" if self.cleaned_data.get("api_key") else None

    def save(self, commit: bool = True) -> Teacher:
        change = self.key_change  # read before the instance changes
        teacher: Teacher = super().save(commit=False)
        teacher.organization = self.organization
        if change == "cleared":
            teacher.set_api_key("")
        elif change == "set":
            teacher.set_api_key(self.cleaned_data["api_key"])
        if commit:
            teacher.save()
        return teacher


# ---------------------------------------------------------------- jobs

# The defaults of the recipe settings (the form's initial values; the API fills missing options with them).
DEFAULT_OPTIONS: dict[str, Any] = {
    "epochs": 1.0,
    "token_budget": None,
    "lora_rank": 16,
    "divergence": "forward_kl",
    "alpha": 0.5,
    "context": True,
    "pairs_per_chunk": 2,
    "self_reward": "auto",
    "reward_threshold": 3,
    "reasoning": False,
}
OPTION_KEYS = tuple(DEFAULT_OPTIONS)
DIVERGENCES = [
    ("forward_kl", "Forward KL: the student covers every continuation the teacher likes (mean-seeking)"),
    ("reverse_kl", "Reverse KL: the student commits to the teacher's main mode (mode-seeking)"),
    ("jsd", "Jensen–Shannon: between the two, bounded"),
]
LORA_RANKS = [(4, "4"), (8, "8"), (16, "16"), (32, "32"), (64, "64")]
SELF_REWARD_LABELS = {
    "auto": "Auto: on for an endpoint or a local teacher of 1B+ parameters",
    "on": "On: the teacher grades every pair",
    "off": "Off: keep every well-formed pair",
}
SELF_REWARD = [(value, SELF_REWARD_LABELS[value]) for value in SELF_REWARD_CHOICES]


class CorpusChoiceField(forms.ModelChoiceField):
    def to_python(self, value: Any) -> Any:
        # ModelChoiceField turns ValueError/TypeError into "not a valid choice", but a JSON Infinity or a float too
        # large for an int reaches the lookup as int(inf) → OverflowError: refuse those the same way.
        if isinstance(value, float) and not value.is_integer():
            raise forms.ValidationError(self.error_messages["invalid_choice"], code="invalid_choice")
        return super().to_python(value)

    def label_from_instance(self, obj: Corpus) -> str:  # type: ignore[override]
        version = obj.current_version
        tokens = (version.stats.get("tokens") if version else None) or 0
        return f"{obj.name} (v{version.number if version else '?'}, {tokens:,} tokens)"


class OverflowSafeFloatField(forms.FloatField):
    """Django's FloatField, refusing a JSON integer too large for a float (float() raises OverflowError there)."""

    def to_python(self, value: Any) -> float | None:
        try:
            return super().to_python(value)
        except OverflowError as error:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from error


class JobForm(forms.Form):
    """A new distillation job: data, teacher, recipe and its main settings."""

    name = forms.CharField(max_length=120, help_text="Shown in the job list and on the expert's card.")
    corpus = CorpusChoiceField(
        queryset=Corpus.objects.none(),
        help_text="Corpora with a ready version; the job uses the current version and keeps using it.",
    )
    teacher = forms.ChoiceField(help_text="Shared teachers and your organization's own (Jobs → Teachers).")
    recipe = forms.ChoiceField(
        choices=DistillationJob.Recipe.choices,
        initial=DistillationJob.Recipe.KD,
        widget=forms.RadioSelect,
        help_text="kd: the student learns the teacher's next-token distribution on your text (needs the same "
        "tokenizer, or cross-tokenizer support). qa: the teacher writes question–answer pairs from each chunk; "
        "it needs a teacher of about 1–3B parameters or more, or an endpoint model.",
    )
    epochs = OverflowSafeFloatField(
        required=False,
        min_value=0.1,
        max_value=20,
        initial=DEFAULT_OPTIONS["epochs"],
        help_text="Passes over the training chunks (default 1).",
    )
    token_budget = forms.IntegerField(
        required=False,
        min_value=1_000,
        max_value=10_000_000_000,
        help_text="Optional: train on this many tokens instead (overrides epochs).",
    )
    lora_rank = forms.TypedChoiceField(
        choices=LORA_RANKS,
        coerce=int,
        initial=DEFAULT_OPTIONS["lora_rank"],
        label="LoRA rank",
        help_text="Capacity of the adapter: 16 suits most corpora; higher learns more and weighs more.",
    )
    divergence = forms.ChoiceField(
        choices=DIVERGENCES,
        initial=DEFAULT_OPTIONS["divergence"],
        label="KD divergence",
        help_text="Recipe kd: how the student's distribution is compared with the teacher's.",
    )
    alpha = OverflowSafeFloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        initial=DEFAULT_OPTIONS["alpha"],
        label="α",
        help_text="Recipe kd: weight of the plain next-token loss; 1 − α goes to matching the teacher (default 0.5).",
    )
    context = forms.BooleanField(
        required=False,
        initial=DEFAULT_OPTIONS["context"],
        label="Context distillation",
        help_text="Recipe kd: the teacher reads the preceding chunk first, so the student learns what the teacher "
        "knows with context.",
    )
    pairs_per_chunk = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10,
        initial=DEFAULT_OPTIONS["pairs_per_chunk"],
        label="Q&A pairs per chunk",
        help_text="Recipe qa: questions the teacher writes for each chunk (default 2).",
    )
    self_reward = forms.ChoiceField(
        required=False,
        choices=SELF_REWARD,
        initial=DEFAULT_OPTIONS["self_reward"],
        label="Self-reward",
        help_text="Recipe qa: the teacher grades each pair 1–5 and drops those below the threshold. A teacher under "
        "~1B parameters grades no better than chance and drops nearly everything, so auto keeps its well-formed "
        "pairs ungraded.",
    )
    reward_threshold = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=5,
        initial=DEFAULT_OPTIONS["reward_threshold"],
        label="Self-reward threshold",
        help_text="Recipe qa: the teacher grades each pair 1–5; pairs below this are dropped (default 3).",
    )
    reasoning = forms.BooleanField(
        required=False,
        initial=DEFAULT_OPTIONS["reasoning"],
        label="Step-by-step reasoning",
        help_text="Recipe qa: the teacher reasons before each answer, and the expert learns to reason too "
        "(R1-style, in <think>…</think>) before answering; longer answers, more teacher tokens.",
    )
    eval_set = forms.FileField(
        required=False,
        label="Evaluation set (JSONL, optional)",
        help_text='One JSON object a line with "question" and "answer"; the expert is scored on it at the end.',
    )
    spend_cap_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        label="Spend cap (USD, optional)",
        help_text="Priced endpoint teachers: the job stops calling the teacher before spending more.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.organization = organization
        corpus_field = self.fields["corpus"]
        assert isinstance(corpus_field, forms.ModelChoiceField)
        corpus_field.queryset = (
            Corpus.objects.for_org(organization).filter(current_version__isnull=False).select_related("current_version")
        )
        self.teacher_choices = {choice.value: choice for choice in services.teacher_choices(organization)}
        teacher_field = self.fields["teacher"]
        assert isinstance(teacher_field, forms.ChoiceField)
        teacher_field.choices = [(value, choice.label) for value, choice in self.teacher_choices.items()]

    def clean_eval_set(self) -> UploadedFile | None:
        upload = self.cleaned_data.get("eval_set")
        if not upload:
            return None
        if upload.size > EVAL_SET_MAX_BYTES:
            raise forms.ValidationError(f"The evaluation set is larger than {EVAL_SET_MAX_BYTES // 2**20} MiB.")
        lines = 0
        upload.seek(0)
        for number, raw in enumerate(upload, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as error:
                raise forms.ValidationError(f"Line {number} is not JSON.") from error
            if not isinstance(record, dict) or not all(
                isinstance(record.get(key), str) and record[key].strip() for key in ("question", "answer")
            ):
                raise forms.ValidationError(f'Line {number} needs a "question" and an "answer" (non-empty text).')
            lines += 1
            if lines > EVAL_SET_MAX_LINES:
                raise forms.ValidationError(f"The evaluation set has more than {EVAL_SET_MAX_LINES} questions.")
        if not lines:
            raise forms.ValidationError("The evaluation set has no questions.")
        upload.seek(0)
        return upload

    def options(self) -> dict[str, Any]:
        """The job's `options` dict, defaults filled in (valid forms only)."""
        data = self.cleaned_data
        options = {key: data.get(key) for key in OPTION_KEYS}
        for key in ("epochs", "alpha", "pairs_per_chunk", "reward_threshold"):
            if options[key] is None:
                options[key] = DEFAULT_OPTIONS[key]
        options["context"] = bool(options["context"])
        options["reasoning"] = bool(options["reasoning"])
        options["self_reward"] = options["self_reward"] or DEFAULT_OPTIONS["self_reward"]
        return options

    def teacher_snapshot(self) -> dict[str, Any]:
        choice = self.teacher_choices.get(self.cleaned_data.get("teacher", ""))
        return choice.snapshot if choice else {}

    def create_job(self, user: Any) -> DistillationJob:
        """The job this valid form describes, its evaluation set stored first (and removed again when the rules
        refuse the job: services.JobError goes on to the caller)."""
        eval_set_name = self.store_eval_set()
        try:
            return services.create_job(
                self.organization,
                user,
                name=self.cleaned_data["name"],
                corpus=self.cleaned_data["corpus"],
                teacher_value=self.cleaned_data["teacher"],
                recipe=self.cleaned_data["recipe"],
                options=self.options(),
                eval_set_name=eval_set_name,
                spend_cap_usd=self.cleaned_data.get("spend_cap_usd"),
            )
        except services.JobError:
            if eval_set_name:
                default_storage.delete(eval_set_name)
            raise

    def store_eval_set(self) -> str:
        """Save the validated evaluation set under the org's folder; returns its storage name ("" when none)."""
        upload = self.cleaned_data.get("eval_set")
        if not upload:
            return ""
        name = f"jobs/org-{self.organization.pk}/eval-{uuid.uuid4().hex}.jsonl"
        return default_storage.save(name, ContentFile(upload.read()))


def clone_initial(job: DistillationJob, organization: Organization) -> dict[str, Any]:
    """The new-job form's initial values copied from `job` (its teacher when it can still be chosen)."""
    initial: dict[str, Any] = {**DEFAULT_OPTIONS, **{k: v for k, v in job.options.items() if k in OPTION_KEYS}}
    initial.update(name=f"{job.name} (copy)", corpus=job.corpus_id, recipe=job.recipe, self_reward=job.self_reward)
    if job.spend_cap_usd is not None:
        initial["spend_cap_usd"] = job.spend_cap_usd
    snapshot = job.teacher_snapshot
    for choice in services.teacher_choices(organization):
        same_row = job.teacher_id is not None and choice.teacher is not None and choice.teacher.pk == job.teacher_id
        same_global = choice.teacher is None and snapshot.get("source") == "global" and choice.snapshot == snapshot
        if same_row or same_global:
            initial["teacher"] = choice.value
            break
    return initial
