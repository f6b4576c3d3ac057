"""Sign up, plus thin subclasses of Django's auth views that add the audit log and our templates."""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods

from webapp.accounts.forms import SignUpForm
from webapp.accounts.throttle import LoginThrottle
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


class LoginView(auth_views.LoginView):
    """Django's sign-in, refused with 429 while the username or the client's address has too many failures.

    The refusal comes before the form is validated, so a locked-out attempt never reaches the password check
    (nor the failed-login audit: the guesses it stops were already audited up to the limit).
    """

    template_name = "accounts/login.html"

    def _throttle(self) -> LoginThrottle:
        return LoginThrottle.for_attempt(str(self.request.POST.get("username", "")), client_ip(self.request))

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        retry_after = self._throttle().retry_after()
        if retry_after is None:
            return super().post(request, *args, **kwargs)
        # An unbound form: rendering a bound one would validate it, and so try the password.
        form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")})
        context = self.get_context_data(form=form, locked_minutes=math.ceil(retry_after / 60))
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(retry_after)
        return response

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        self._throttle().clear_username()
        return super().form_valid(form)

    def form_invalid(self, form):  # type: ignore[no-untyped-def]
        # Only attempts that reached the password check count; an empty field is a typo, not a guess.
        if form.data.get("username") and form.data.get("password"):
            self._throttle().record_failure()
        return super().form_invalid(form)


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
