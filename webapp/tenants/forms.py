from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from webapp.core.sizes import ByteSizeField, format_size
from webapp.tenants.models import ApiToken, Organization
from webapp.tenants.permissions import Role


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name"]


class QuotaForm(forms.ModelForm):
    storage_quota_bytes = ByteSizeField(label="Storage limit", required=False)

    class Meta:
        model = Organization
        fields = ["storage_quota_bytes"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default = format_size(settings.ORG_STORAGE_QUOTA_BYTES)
        self.fields["storage_quota_bytes"].help_text = (
            f"e.g. 20 GB or 500 MB (1 GB = 1024³ bytes, as the pages count); empty uses the platform "
            f"default, {default}."
        )


class AddMemberForm(forms.Form):
    identifier = forms.CharField(label="Username or email", max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name", "scope"]
        labels = {"scope": "Access"}
        help_texts = {
            "name": "What uses this token, e.g. “CI pipeline”.",
            "scope": "Models only suits a token that ships inside an app: it can chat with your experts and "
            "nothing else.",
        }
        widgets = {"scope": forms.RadioSelect}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["scope"].required = False  # left out: full access, as before the choice existed
        self.fields["scope"].initial = ApiToken.Scope.FULL

    def clean_scope(self) -> str:
        return self.cleaned_data.get("scope") or ApiToken.Scope.FULL


class DeleteOrganizationForm(forms.Form):
    confirm_name = forms.CharField(label="Type the organization's name to confirm")

    def __init__(self, *args: object, organization: Organization, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.organization = organization

    def clean_confirm_name(self) -> str:
        value = self.cleaned_data["confirm_name"]
        if value != self.organization.name:
            raise forms.ValidationError("The name does not match.")
        return value
