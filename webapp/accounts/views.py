"""Sign up, plus thin subclasses of Django's auth views that add the audit log and our templates."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods

from webapp.accounts.forms import SignUpForm
from webapp.core.http import client_ip
from webapp.tenants.current import set_current_organization
from webapp.tenants.models import AuditEvent, Organization


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("core:home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        org = Organization.create_with_owner(name=form.cleaned_data["organization_name"], owner=user)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        set_current_organization(request, org.pk)
        messages.success(request, f"Welcome to Distillery. You own {org.name}.")
        return redirect("core:home")
    return render(request, "accounts/signup.html", {"form": form})


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("core:home")

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        response = super().form_valid(form)
        for org in Organization.objects.filter(memberships__user=self.request.user):
            AuditEvent.record(
                org,
                self.request.user,
                AuditEvent.Action.PASSWORD_CHANGED,
                target=self.request.user.get_username(),
                ip_address=client_ip(self.request),
            )
        messages.success(self.request, "Your password was changed.")
        return response


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    email_template_name = "accounts/password_reset_email.txt"
    subject_template_name = "accounts/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")
