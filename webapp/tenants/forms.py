from __future__ import annotations

from django import forms

from webapp.tenants.models import ApiToken, Organization
from webapp.tenants.permissions import Role


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name"]


class QuotaForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["storage_quota_bytes"]
        labels = {"storage_quota_bytes": "Storage limit (bytes)"}


class AddMemberForm(forms.Form):
    identifier = forms.CharField(label="Username or email", max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name"]
        help_texts = {"name": "What uses this token, e.g. “CI pipeline”."}


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
