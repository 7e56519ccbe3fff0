"""The Run form drawn from a flow's ``input_schema``: one field per declared property.

The form only turns what was typed into JSON values (a number box into a number, a JSON box
into its value); the schema's rules (required, enum, minimum, format ...) are checked by the
one check every start path makes (``services.execution_start``), whose errors come back at
JSON Pointers and are shown here next to their fields (``add_input_errors``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from django import forms

from flows.definition import unstorable_problem
from flows.web.builder import JSONValueField, NumberField

# Property names that make a tidy form field name (and HTML id); others get ``field<n>``.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,60}$")
PREFIX = "input"


def _kind(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        # ["string", "null"]: the one real type; any other mix is typed as JSON.
        real = [k for k in kind if k != "null"]
        kind = real[0] if len(real) == 1 else None
    return kind if isinstance(kind, str) else ""


class InputSchemaForm(forms.Form):
    """A field for each property of ``schema`` (in the schema's order), typed by the property:
    text, number, checkbox, select for an enum, JSON for arrays, objects and anything else.
    ``description`` is the help text, ``default`` the initial value, ``format: password`` a
    masked box; required properties are marked (and checked by the schema, not here)."""

    def __init__(self, schema: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", PREFIX)
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.top_errors: list[str] = []
        required = set(schema.get("required") or [])
        # form field name -> property name, and back (errors arrive by property).
        self.properties: dict[str, str] = {}
        self.by_property: dict[str, str] = {}
        for index, (name, prop) in enumerate((schema.get("properties") or {}).items()):
            if not isinstance(prop, Mapping):
                continue
            key = name if _NAME_RE.match(name) else f"field{index}"
            field = self._field(prop)
            field.label = str(prop.get("title") or name)
            field.help_text = str(prop.get("description") or "")
            field.is_required_property = name in required  # type: ignore[attr-defined]
            if name in required and _kind(prop) != "boolean":
                field.widget.attrs.update({"required": True, "aria-required": "true"})
            if "default" in prop:
                field.initial = self._initial(field, prop["default"])
            self.fields[key] = field
            self.properties[key] = name
            self.by_property[name] = key

    @staticmethod
    def _field(prop: Mapping[str, Any]) -> forms.Field:
        # Nothing is required for Django: a blank field is left out of the input, so the
        # schema's default fills it, or its "required" says it is missing.
        kind = _kind(prop)
        enum = prop.get("enum")
        if isinstance(enum, list) and enum:
            choices = [("", "— not set —")]
            choices += [(json.dumps(v), v if isinstance(v, str) else json.dumps(v)) for v in enum]
            return forms.TypedChoiceField(
                choices=choices, coerce=json.loads, empty_value=None, required=False
            )
        if kind == "string":
            if prop.get("format") == "password":
                return forms.CharField(widget=forms.PasswordInput, strip=False, required=False)
            big = (prop.get("maxLength") or 0) > 200
            widget = forms.Textarea(attrs={"rows": 2}) if big else forms.TextInput
            return forms.CharField(widget=widget, strip=False, required=False)
        if kind == "integer":
            return forms.IntegerField(widget=forms.NumberInput(attrs={"step": "1"}), required=False)
        if kind == "number":
            return NumberField(widget=forms.NumberInput(attrs={"step": "any"}), required=False)
        if kind == "boolean":
            return forms.BooleanField(required=False)
        return JSONValueField(
            widget=forms.Textarea(attrs={"rows": 2}),
            required=False,
            help_text="",
            error_messages={"invalid": 'Enter valid JSON, e.g. [1, 2] or {"key": "value"}.'},
        )

    @staticmethod
    def _initial(field: forms.Field, default: Any) -> Any:
        if isinstance(field, forms.TypedChoiceField):
            return json.dumps(default)
        return default

    def input(self) -> dict[str, Any]:
        """The typed values (call after ``is_valid``): blank fields left out; a checkbox is
        always true or false."""
        value: dict[str, Any] = {}
        for key, name in self.properties.items():
            typed = self.cleaned_data.get(key)
            if isinstance(self.fields[key], forms.BooleanField):
                value[name] = bool(typed)
            elif typed is not None and typed != "":
                value[name] = typed
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for key in self.properties:
            problem = unstorable_problem(data.get(key), "the value")
            if problem:
                self.add_error(key, f"This value {problem.removeprefix('contains ')}")
        return data

    def add_input_errors(self, errors: list[dict[str, str]]) -> None:
        """The schema's errors (at JSON Pointers) next to their fields: ``/count`` and
        ``/customer/id`` go to the field of ``count`` and ``customer``; the others (the
        whole input, an undeclared key) above the form."""
        for error in errors:
            pointer = error.get("field") or ""
            head = pointer.split("/")[1] if pointer.startswith("/") else ""
            name = head.replace("~1", "/").replace("~0", "~")
            key = self.by_property.get(name)
            if key is None:
                self.top_errors.append(f"{pointer or 'input'}: {error['message']}")
            else:
                rest = pointer[len(head) + 1 :]
                message = error["message"] if not rest else f"{rest}: {error['message']}"
                self.add_error(key, message)
