"""The Secrets page: names and metadata, a form to store one, one to replace a value, and
deletion with a confirmation. Only for those who may manage secrets (``flows.manage_secret``);
no page ever shows a value, and the forms never fill one back in."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flows import services, vault
from flows.models import Secret
from flows.web.forms import SecretCreateForm, SecretReplaceForm
from flows.web.views.common import explain, needs, or_404

MANAGE = "flows.manage_secret"


def _secret_or_404(name: str) -> Secret:
    def read(key: str) -> Secret:
        found = Secret.objects.listed().filter(pk=key).first()
        if found is None:
            raise services.NotFound(f"no secret named {key!r}")
        return found

    return or_404(read, name)


def _refused(form: Form, exc: services.ServiceError) -> None:
    """A service's refusal on the form: each field error next to its field, the rest on top."""
    placed = False
    for error in exc.errors:
        if error.get("field") in form.fields:
            form.add_error(error["field"], error["message"])
            placed = True
    if not placed:
        form.add_error(None, explain(exc))


def _list(request: HttpRequest, form: SecretCreateForm, status: int = 200) -> HttpResponse:
    context = {
        "secrets": Secret.objects.listed(),
        "form": form,
        "keys_configured": vault.keys_configured(),
        "env_names": sorted(vault.env_names()),
    }
    return render(request, "flows/secret_list.html", context, status=status)


@login_required
@needs(MANAGE)
def secret_list(request: HttpRequest) -> HttpResponse:
    """GET: the list and an empty form; POST: store a new secret from the form."""
    if request.method != "POST":
        return _list(request, SecretCreateForm())
    form = SecretCreateForm(request.POST)
    if form.is_valid():
        try:
            secret = services.secret_create(**form.cleaned_data, user=request.user)
        except services.ServiceError as exc:
            _refused(form, exc)
        else:
            messages.success(request, f"Secret {secret.name} stored.")
            return redirect("secret_list")
    return _list(request, form, status=400)


@login_required
@needs(MANAGE)
def secret_replace(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the replace-value form (never filled in); POST: replace the value."""
    secret = _secret_or_404(name)
    form = SecretReplaceForm(initial={"description": secret.description})
    status = 200
    if request.method == "POST":
        form = SecretReplaceForm(request.POST)
        if form.is_valid():
            try:
                services.secret_replace(name=secret.name, **form.cleaned_data, user=request.user)
            except services.ServiceError as exc:
                _refused(form, exc)
            else:
                messages.success(request, f"The value of {secret.name} was replaced.")
                return redirect("secret_list")
        status = 400
    context = {"secret": secret, "form": form, "keys_configured": vault.keys_configured()}
    return render(request, "flows/secret_replace.html", context, status=status)


@login_required
@needs(MANAGE)
def secret_delete(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the confirmation; POST: delete."""
    secret = _secret_or_404(name)
    if request.method == "POST":
        try:
            services.secret_delete(name=secret.name)
        except services.ServiceError as exc:
            messages.error(request, explain(exc))
        else:
            messages.success(request, f"Secret {secret.name} deleted.")
        return redirect("secret_list")
    return render(request, "flows/secret_delete.html", {"secret": secret})
