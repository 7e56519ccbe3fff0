"""Small forms of the operator pages (the builder's forms are in ``builder.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.utils import timezone

from flows.definition import unstorable_problem
from flows.models import ExecutionStatus, Flow, ScheduleCatchup, ScheduleOverlap
from flows.web.builder import JSONValueField


class ExecutionFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False, choices=[("", "any status"), *ExecutionStatus.choices]
    )
    flow = forms.ChoiceField(required=False)
    created_from = forms.DateField(
        label="from", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    created_until = forms.DateField(
        label="until", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        flows = Flow.objects.order_by("id").values_list("id", "name")
        self.fields["flow"].choices = [("", "any flow"), *((i, f"{n} ({i})") for i, n in flows)]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, until = data.get("created_from"), data.get("created_until")
        if start and until and until < start:
            self.add_error("created_until", "Must not be before the start date.")
        return data

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``ExecutionQuerySet.matching`` (the whole days, inclusive)."""
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        tz = timezone.get_current_timezone()

        def moment(day: dt.date | None, end: bool) -> dt.datetime | None:
            if day is None:
                return None
            time = dt.time.max if end else dt.time.min
            return dt.datetime.combine(day, time, tzinfo=tz)

        return {
            "status": data.get("status") or "",
            "flow_id": data.get("flow") or "",
            "created_from": moment(data.get("created_from"), end=False),
            "created_until": moment(data.get("created_until"), end=True),
        }


class RunForm(forms.Form):
    input = JSONValueField(
        required=False,
        label="Input (JSON object, optional)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"customer": 42}'}),
    )

    def clean_input(self) -> dict[str, Any]:
        return _json_object(self.cleaned_data.get("input"))


class SignalForm(forms.Form):
    """Approve / Reject on the execution page: the API's signal as a form."""

    name = forms.CharField(max_length=100, widget=forms.HiddenInput)
    decision = forms.ChoiceField(
        required=False, choices=[("approve", "Approve"), ("reject", "Reject")]
    )
    comment = forms.CharField(required=False, max_length=2000, strip=True)
    payload = JSONValueField(required=False, label="Payload (JSON object, optional)")

    def understood(self) -> bool:
        """Invalid, but only in what the user typed (payload, comment): the page shows it
        again with the error next to its field. A bad name or decision the page never sends
        is not understood."""
        return not set(self.errors) - {"payload", "comment"}

    def clean_decision(self) -> str:
        return self.cleaned_data.get("decision") or "approve"

    def clean_payload(self) -> dict[str, Any] | None:
        value = self.cleaned_data.get("payload")
        return _json_object(value) if value not in (None, "") else None


def _json_object(value: Any) -> dict[str, Any]:
    """An optional JSON-object field: blank is {}, anything but an object is refused."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise forms.ValidationError('Must be a JSON object, e.g. {"key": "value"}.')
    problem = unstorable_problem(value, "input")
    if problem:
        raise forms.ValidationError(f"The input {problem}.")
    return value


class ScheduleForm(forms.Form):
    """A flow's cron schedule; the cron expression itself is checked by the service."""

    cron = forms.CharField(
        max_length=100,
        label="Cron expression",
        help_text="minute hour day month weekday, e.g. */15 * * * * (every 15 minutes)",
        widget=forms.TextInput(attrs={"placeholder": "*/15 * * * *"}),
    )
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")
    input = JSONValueField(
        required=False,
        label="Input for each run (JSON object, optional)",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"region": "eu"}'}),
    )
    # Not required: a form posted without them (an older page) keeps the schedule's own.
    overlap = forms.ChoiceField(
        required=False,
        choices=ScheduleOverlap.choices,
        initial=ScheduleOverlap.SKIP,
        label="When a run is due while the last one still runs",
        help_text="skip it; buffer_one: run it when that one ends (at most one waits); "
        "allow: run it anyway",
    )
    catchup = forms.ChoiceField(
        required=False,
        choices=ScheduleCatchup.choices,
        initial=ScheduleCatchup.NONE,
        label="Runs missed while no worker ran",
        help_text="none; last: the latest of them; all: each of them (within the window)",
    )
    catchup_window_seconds = forms.IntegerField(
        required=False,
        initial=86_400,
        min_value=1,
        label="Catch-up window (seconds)",
        help_text="How far back a missed run is still caught up",
    )

    @classmethod
    def for_flow(cls, flow: Flow) -> ScheduleForm:
        """Empty for a flow with no schedule, else showing its schedule."""
        schedule = getattr(flow, "schedule", None)
        if schedule is None:
            return cls()
        initial = {
            "cron": schedule.cron,
            "enabled": schedule.enabled,
            "input": schedule.input,
            "overlap": schedule.overlap,
            "catchup": schedule.catchup,
            "catchup_window_seconds": schedule.catchup_window_seconds,
        }
        return cls(initial=initial)

    def clean_input(self) -> dict[str, Any]:
        return _json_object(self.cleaned_data.get("input"))

    def clean_overlap(self) -> str | None:
        return self.cleaned_data.get("overlap") or None

    def clean_catchup(self) -> str | None:
        return self.cleaned_data.get("catchup") or None


def _secret_value_field() -> forms.CharField:
    # A password input that is never filled back in (render_value=False), kept exactly as
    # typed (a key may end in a newline or a space); the service checks the rest.
    return forms.CharField(
        label="Value",
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; nobody can read it back here, in the API or the admin.",
    )


class SecretCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="Letters, digits and underscores, starting with a letter; flows use it as "
        "${secrets.NAME}.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    value = _secret_value_field()
    description = forms.CharField(required=False, max_length=500)


class SecretReplaceForm(forms.Form):
    value = _secret_value_field()
    description = forms.CharField(required=False, max_length=500)


# What the flow page's webhook form offers, as the API's bodies (flows/api/resource/webhooks.py).
WEBHOOK_KINDS = {
    "github": {"auth": "hmac", "preset": "github"},
    "stripe": {"auth": "hmac", "preset": "stripe"},
    "hmac": {"auth": "hmac"},
    "token": {"auth": "token"},
}


class WebhookForm(forms.Form):
    """A new webhook; its meaning (headers, references of the mapping) is checked by the
    service, which names the field of each problem."""

    kind = forms.ChoiceField(
        label="Sender",
        choices=[
            ("github", "GitHub (X-Hub-Signature-256)"),
            ("stripe", "Stripe (Stripe-Signature)"),
            ("hmac", "Other HMAC-SHA256 signature (header below, hex)"),
            ("token", "Token (in the header below; none: the URL alone)"),
        ],
    )
    header = forms.CharField(
        required=False,
        max_length=100,
        label="Header",
        widget=forms.TextInput(attrs={"placeholder": "X-Signature"}),
    )
    input_mapping = JSONValueField(
        required=False,
        label="Input mapping (JSON object, optional; default: the body)",
        widget=forms.Textarea(
            attrs={"rows": 2, "placeholder": '{"event": "${headers.X-GitHub-Event}"}'}
        ),
    )
    rate_limit_per_minute = forms.IntegerField(
        required=False, min_value=1, label="Rate limit per minute (optional)"
    )

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        arguments: dict[str, Any] = dict(WEBHOOK_KINDS[data["kind"]])
        if data["kind"] in ("hmac", "token") and data["header"]:
            arguments["header"] = data["header"]
        if data["kind"] == "hmac":
            arguments["prefix"] = "sha256="
        if data.get("input_mapping") not in (None, ""):
            arguments["input_mapping"] = data["input_mapping"]
        if data.get("rate_limit_per_minute"):
            arguments["rate_limit_per_minute"] = data["rate_limit_per_minute"]
        return arguments
