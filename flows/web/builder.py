"""The flow builder: forms that edit a flow document without writing JSON.

One flow form (id, name, start task, ...) and a formset of task rows. Each row holds the
task, the fields of its type's parameters (generated from the type's JSON Schema) and the
task's condition. The forms only check *shape* (a number is a number, JSON parses); the
meaning of the flow is checked by ``services.validate_flow``, whose errors come back with
paths such as ``tasks[1].parameters.url`` that ``attach_errors`` puts on the matching field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.conf import settings
from django.forms import BaseFormSet, formset_factory

from flows.definition import CONTROL_TYPES, END, unwrap
from flows.registry import TaskType, default_registry
from flows.web.graph import task_count

PARAM_PREFIX = "param_"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,60}$")
_PATH_RE = re.compile(r"^(tasks|conditions)\[(\d+)\](?:\.([A-Za-z_]+))?(.*)$")
_REQUIRED_RE = re.compile(r"^'([^']+)' is a required property$")


class TargetSelect(forms.Select):
    """A select of task names and "end"; the choices are set per render from the draft."""


class JSONValueField(forms.JSONField):
    """A JSON field that shows an empty box, not ``null``, when there is no value."""

    def prepare_value(self, value: Any) -> Any:
        if value is None:
            return ""
        text = super().prepare_value(value)
        # A lone surrogate (sent as "\\ud800") cannot go out in a page: show its escape, which
        # is the JSON that was sent.
        return text.encode("utf-8", "backslashreplace").decode() if isinstance(text, str) else text


class NumberField(forms.FloatField):
    """A JSON number: whole numbers stay ints so documents round-trip unchanged."""

    def to_python(self, value: Any) -> int | float | None:
        number = super().to_python(value)
        if number is not None and number.is_integer() and re.fullmatch(r"-?\d+", str(value)):
            return int(number)
        return number


# The id of the builder page's <datalist> of ${secrets.NAME} suggestions.
REFERENCE_SUGGESTIONS = "secret-names"


def parameter_fields(schema: Mapping[str, Any]) -> dict[str, forms.Field]:
    """Form fields for the properties of a parameters JSON Schema.

    string, number, integer, boolean and enum get their own widget; any other property gets
    a JSON field. Nothing is required here: required properties are checked by validation.
    """
    required = set(schema.get("required") or [])
    fields: dict[str, forms.Field] = {}
    for key, prop in (schema.get("properties") or {}).items():
        if not _KEY_RE.match(key) or not isinstance(prop, Mapping):
            continue
        kind = prop.get("type")
        if isinstance(kind, list) and kind and kind[0] == "string":
            # A text that may also be a number or boolean (print's `message`): a text box.
            kind = "string"
        label = key.replace("_", " ") + (" *" if key in required else "")
        common: dict[str, Any] = {
            "required": False,
            "label": label,
            "help_text": _help(prop, required=key in required),
        }
        enum = prop.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            choices = [("", "— not set —"), *((v, v) for v in enum)]
            fields[key] = forms.ChoiceField(choices=choices, **common)
        elif kind == "string":
            big = (prop.get("maxLength") or 0) > 200
            # A one-line text box suggests the known secrets (the page's datalist) as
            # ${secrets.NAME}: a reference is the way to pass a key without writing it here.
            widget = (
                forms.Textarea(attrs={"rows": 2})
                if big
                else forms.TextInput(attrs={"list": REFERENCE_SUGGESTIONS})
            )
            fields[key] = forms.CharField(widget=widget, strip=False, **common)
        elif kind == "integer":
            fields[key] = NumberField(widget=forms.NumberInput(attrs={"step": "1"}), **common)
        elif kind == "number":
            fields[key] = NumberField(widget=forms.NumberInput(attrs={"step": "any"}), **common)
        elif kind == "boolean":
            fields[key] = forms.TypedChoiceField(
                choices=[("", "— not set —"), ("true", "yes"), ("false", "no")],
                coerce=lambda v: v == "true",
                empty_value=None,
                **common,
            )
        else:
            fields[key] = JSONValueField(widget=forms.Textarea(attrs={"rows": 2}), **common)
    return fields


def _help(prop: Mapping[str, Any], *, required: bool) -> str:
    parts = [str(prop["description"])] if prop.get("description") else []
    if "default" in prop:
        parts.append(f"default: {json.dumps(prop['default'])}")
    if required:
        parts.append("required")
    return " · ".join(parts)


def takes_extra_parameters(schema: Mapping[str, Any]) -> bool:
    """Whether a type accepts parameters its schema does not list (so a JSON box is shown)."""
    return not schema.get("properties") or schema.get("additionalProperties", True) is not False


class FlowForm(forms.Form):
    id = forms.CharField(
        label="Flow id",
        max_length=100,
        help_text="Letters, digits, '-' and '_'. Saving under an existing id adds a version.",
    )
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the id.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    start_task = forms.CharField(
        required=False, widget=TargetSelect, help_text="Where every execution begins."
    )
    max_steps = forms.IntegerField(
        required=False, min_value=1, help_text="Step limit of one execution (default 1000)."
    )
    # Kept as JSON here: the builder edits tasks, and a schema saved by the JSON tab or the
    # API must survive a save from this tab.
    input_schema = JSONValueField(
        required=False,
        label="Input schema (JSON Schema, optional)",
        help_text='Every start checks its input against it; e.g. {"type": "object", '
        '"required": ["customer"], "properties": {"customer": {"type": "string"}}}',
        widget=forms.Textarea(attrs={"rows": 3, "class": "code"}),
    )
    # As input_schema: kept through a save from this tab (flow triggers, see the README).
    on_flow_end = JSONValueField(
        required=False,
        label="Starts on the end of (on_flow_end, optional)",
        help_text='Flows whose ends start this one; e.g. [{"flow_id": "nightly", "states": '
        '["COMPLETED"], "condition": "result.count > 0"}]',
        widget=forms.Textarea(attrs={"rows": 2, "class": "code"}),
    )

    on_failure = forms.CharField(
        label="Error-handler flow (on_failure)",
        max_length=100,
        required=False,
        help_text="The id of a flow started when an execution of this one fails.",
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            # The page edits one flow: its id is fixed (a new id is a new flow).
            self.fields["id"].disabled = True
            self.fields["id"].help_text = "Saving stores a new version of this flow."

    def set_task_names(self, names: list[str]) -> None:
        current = self["start_task"].value() or ""
        choices = [("", "the first task")] + [(n, n) for n in names]
        if current and current not in names:
            choices.append((current, f"{current} (not a task)"))
        self.fields["start_task"].widget.choices = choices


class TaskForm(forms.Form):
    """One task row: the task, its parameters and its condition."""

    name = forms.CharField(max_length=100, required=False)
    task_type = forms.ChoiceField(label="Type", required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    timeout_seconds = NumberField(
        label="Timeout (s)", required=False, help_text="Blank: the type's default."
    )
    params_extra = JSONValueField(
        label="Other parameters (JSON object)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    outcome = forms.ChoiceField(
        label="Condition",
        required=False,
        choices=[("", "— none —"), ("success", "if it succeeds"), ("failure", "if it fails")],
        help_text="None: success goes to the next task, failure ends the flow.",
    )
    target_task_success = forms.CharField(label="go to", required=False, widget=TargetSelect)
    target_task_failure = forms.CharField(
        label="otherwise go to", required=False, widget=TargetSelect
    )
    condition_name = forms.CharField(label="Condition name", max_length=200, required=False)
    # A parallel, map or subflow task, kept whole as JSON: the form shows it read-only (its
    # branches and iterator are edited in the JSON tab) and only its condition is edited here.
    control = JSONValueField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, types: Mapping[str, TaskType] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        types = types if types is not None else default_registry().types
        self.control_task = _control_task(self["control"].value())
        chosen = self["task_type"].value() or ""
        if self.control_task is not None:
            chosen = str(self.control_task.get("task_type"))  # no registered type: no fields
        choices = [("", "— choose a type —")] + [(n, n) for n in sorted(types)]
        if self.control_task is not None:
            choices.append((chosen, chosen))
        elif chosen and chosen not in types:
            choices.append((chosen, f"{chosen} (not registered)"))
        self.fields["task_type"].choices = choices
        self.type_info: TaskType | None = types.get(chosen)
        schema = self.type_info.parameters_schema if self.type_info else {}
        self.param_names: list[str] = []
        for key, param_field in parameter_fields(schema).items():
            self.fields[PARAM_PREFIX + key] = param_field
            self.param_names.append(key)
        self.shows_extra = self.type_info is None or takes_extra_parameters(schema)
        if not self.shows_extra and self["params_extra"].value() not in (None, "", "null", {}):
            self.shows_extra = True  # keep parameters the schema does not know visible

    @property
    def type_description(self) -> str:
        return self.type_info.description if self.type_info else ""

    @property
    def control_summary(self) -> str:
        """What a control task holds, in a line: its branches, what it maps, what it calls."""
        task = self.control_task or {}
        kind = task.get("task_type")
        if kind == "parallel":
            branches = task.get("branches") if isinstance(task.get("branches"), Mapping) else {}
            return "branches: " + ", ".join(
                f"{name} ({len(_tasks_of(body))} task{'s' if len(_tasks_of(body)) != 1 else ''})"
                for name, body in branches.items()
            )
        if kind == "map":
            iterator = _tasks_of(task.get("iterator"))
            names = ", ".join(str(t.get("name")) for t in iterator)
            summary = f"over {task.get('items')!s}, each item runs: {names}"
            params = task.get("parameters")
            if isinstance(params, Mapping) and params:
                # Its ${input}: resolved per item when they use ${item} or ${item_index}.
                summary += f", with input {json.dumps(params, ensure_ascii=False)}"
            return summary
        params = task.get("parameters") if isinstance(task.get("parameters"), Mapping) else {}
        return f"calls flow {params.get('flow_id')!s}" + (
            f" v{params['version']}" if params.get("version") else ""
        )

    @property
    def control_json(self) -> str:
        return json.dumps(self.control_task, indent=2, ensure_ascii=False)

    def param_fields(self) -> list[forms.BoundField]:
        return [self[PARAM_PREFIX + key] for key in self.param_names]

    def set_task_names(self, names: list[str]) -> None:
        for key in ("target_task_success", "target_task_failure"):
            current = self[key].value() or ""
            choices = [("", "—"), (END, "end (stop the flow)")] + [(n, n) for n in names]
            if current and current != END and current not in names:
                choices.append((current, f"{current} (not a task)"))
            self.fields[key].widget.choices = choices

    def row(self) -> dict[str, Any] | None:
        """This row as a task and its condition (cleaned data), or None for a blank row."""
        data = self.cleaned_data
        if self.control_task is not None:
            task = dict(self.control_task)  # kept whole: edited in the JSON tab
            return {"task": task, "condition": self._condition(task["name"], data)}
        if not data.get("name") and not data.get("task_type"):
            return None  # a blank row: ignored, like an unused line on a paper form
        task: dict[str, Any] = {"name": data.get("name") or "", "task_type": data["task_type"]}
        if data.get("description"):
            task["description"] = data["description"]
        parameters = dict(data["params_extra"]) if isinstance(data["params_extra"], dict) else {}
        for key in self.param_names:
            value = data.get(PARAM_PREFIX + key)
            if value not in (None, ""):
                parameters[key] = value
        task["parameters"] = parameters
        if data.get("timeout_seconds") is not None:
            task["timeout_seconds"] = data["timeout_seconds"]
        return {"task": task, "condition": self._condition(task["name"], data)}

    @staticmethod
    def _condition(source: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        if not data.get("outcome"):
            return None
        condition = {
            "source_task": source,
            "outcome": data["outcome"],
            "target_task_success": data.get("target_task_success") or "",
            "target_task_failure": data.get("target_task_failure") or "",
        }
        if data.get("condition_name"):
            condition = {"name": data["condition_name"], **condition}
        return condition

    def clean_params_extra(self) -> Any:
        value = self.cleaned_data.get("params_extra")
        if value is not None and not isinstance(value, dict):
            raise forms.ValidationError('Must be a JSON object, e.g. {"key": "value"}.')
        return value


def _control_task(value: Any) -> dict[str, Any] | None:
    """The control task a row holds (its ``control`` field, bound or initial), else None."""
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if (
        isinstance(value, Mapping)
        and value.get("task_type") in CONTROL_TYPES
        and isinstance(value.get("name"), str)
    ):
        return dict(value)
    return None


def _tasks_of(body: Any) -> list[Mapping[str, Any]]:
    tasks = body.get("tasks") if isinstance(body, Mapping) else None
    return [t for t in tasks if isinstance(t, Mapping)] if isinstance(tasks, list) else []


class BaseTaskFormSet(BaseFormSet):
    def __init__(self, *args: Any, types: Mapping[str, TaskType] | None = None, **kw: Any):
        self.types = types if types is not None else default_registry().types
        super().__init__(*args, **kw)

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {**super().get_form_kwargs(index), "types": self.types}

    @property
    def empty_form(self) -> TaskForm:
        form = super().empty_form
        form.set_task_names([])
        return form

    def kept_forms(self) -> list[TaskForm]:
        """The forms in the user's order (their ORDER fields), without deleted or unused rows.

        Only for a valid formset.
        """
        return list(self.ordered_forms)


TaskFormSet = formset_factory(
    TaskForm, formset=BaseTaskFormSet, extra=0, can_order=True, can_delete=True
)


@dataclass
class Draft:
    """The builder's forms and where each part of the document came from."""

    flow_form: FlowForm
    formset: BaseTaskFormSet
    task_forms: list[TaskForm] = field(default_factory=list)  # document tasks[i]
    condition_forms: list[TaskForm] = field(default_factory=list)  # document conditions[j]
    general_errors: list[str] = field(default_factory=list)

    def task_names(self) -> list[str]:
        names = []
        for form in self.formset.forms:
            value = (form["name"].value() or "").strip()
            if value and value not in names:
                names.append(value)
        return names

    def prepare(self) -> Draft:
        names = self.task_names()
        self.flow_form.set_task_names(names)
        for form in self.formset.forms:
            form.set_task_names(names)
        return self


def draft_from_document(document: Any, *, editing: bool = False) -> tuple[Draft, list[str]]:
    """Unbound forms showing a document. Also returns what the builder could not keep."""
    doc = unwrap(document)
    doc = doc if isinstance(doc, Mapping) else {}
    dropped: list[str] = []
    flow_initial = {
        k: doc.get(k)
        for k in (
            "id",
            "name",
            "description",
            "start_task",
            "max_steps",
            "input_schema",
            "on_flow_end",
        )
    }
    on_failure = doc.get("on_failure")
    flow_initial["on_failure"] = (
        on_failure.get("flow_id") if isinstance(on_failure, Mapping) else None
    )
    tasks = [t for t in (doc.get("tasks") or []) if isinstance(t, Mapping)]
    conditions: dict[str, Mapping[str, Any]] = {}
    for j, cond in enumerate(doc.get("conditions") or []):
        source = cond.get("source_task") if isinstance(cond, Mapping) else None
        if source in conditions or source not in {t.get("name") for t in tasks}:
            dropped.append(f"conditions[{j}] (its task '{source}' is missing or has another)")
        else:
            conditions[source] = cond
    types = default_registry().types
    rows = [_task_initial(task, conditions.get(task.get("name")), types) for task in tasks]
    if not rows:
        rows = [{}]
    flow_form = FlowForm(initial=flow_initial, editing=editing)
    formset = TaskFormSet(prefix="tasks", initial=rows, types=types)
    # Unbound initial forms: extra=0 shows exactly the rows given.
    return Draft(flow_form, formset).prepare(), dropped


def _task_initial(
    task: Mapping[str, Any], condition: Mapping[str, Any] | None, types: Mapping[str, TaskType]
) -> dict[str, Any]:
    initial: dict[str, Any] = {
        "name": task.get("name"),
        "task_type": task.get("task_type"),
        "description": task.get("description"),
        "timeout_seconds": task.get("timeout_seconds"),
    }
    if task.get("task_type") in CONTROL_TYPES:
        initial["control"] = dict(task)
        task = {}  # no parameter fields: the whole task is kept in ``control``
    task_type = types.get(str(task.get("task_type")))
    schema = task_type.parameters_schema if task_type else {}
    known = set(parameter_fields(schema))
    params = task.get("parameters") if isinstance(task.get("parameters"), Mapping) else {}
    extra = {}
    for key, value in params.items():
        if key in known:
            if isinstance(value, bool):
                value = "true" if value else "false"
            initial[PARAM_PREFIX + key] = value
        else:
            extra[key] = value
    initial["params_extra"] = extra or None
    if condition:
        initial.update(
            outcome=condition.get("outcome"),
            target_task_success=condition.get("target_task_success"),
            target_task_failure=condition.get("target_task_failure"),
            condition_name=condition.get("name"),
        )
    return initial


def bind_draft(data: Mapping[str, Any], *, editing: bool = False, initial_id: str = "") -> Draft:
    flow_form = FlowForm(data, editing=editing, initial={"id": initial_id})
    formset = TaskFormSet(data, prefix="tasks")
    return Draft(flow_form, formset).prepare()


def document_from_draft(draft: Draft) -> dict[str, Any] | None:
    """The flow document the bound forms describe, or None when a field has a shape error.

    Fills ``draft.task_forms`` / ``draft.condition_forms`` so validation errors can be put
    back on the right row.
    """
    if not (draft.flow_form.is_valid() & draft.formset.is_valid()):
        return None
    flow = draft.flow_form.cleaned_data
    doc: dict[str, Any] = {"id": flow["id"], "name": flow.get("name") or flow["id"]}
    if flow.get("description"):
        doc["description"] = flow["description"]
    if flow.get("start_task"):
        doc["start_task"] = flow["start_task"]
    if flow.get("max_steps") is not None:
        doc["max_steps"] = flow["max_steps"]
    if flow.get("input_schema") not in (None, ""):
        doc["input_schema"] = flow["input_schema"]
    if flow.get("on_flow_end") not in (None, "", []):
        doc["on_flow_end"] = flow["on_flow_end"]
    if flow.get("on_failure"):
        doc["on_failure"] = {"flow_id": flow["on_failure"]}
    tasks, conditions = [], []
    draft.task_forms, draft.condition_forms = [], []
    for form in draft.formset.kept_forms():
        row = form.row()
        if row is None:
            continue
        tasks.append(row["task"])
        draft.task_forms.append(form)
        if row["condition"]:
            conditions.append(row["condition"])
            draft.condition_forms.append(form)
    doc["tasks"] = tasks
    if conditions:
        doc["conditions"] = conditions
    return doc


def attach_errors(draft: Draft, errors: list[Mapping[str, str]]) -> None:
    """Put each validation error (``{"field": path, "message": ...}``) next to its field."""
    for error in errors:
        path, message = error.get("field", ""), error.get("message", "")
        target, name = _locate(draft, path, message)
        if name in ("input_schema", "on_flow_end") and path != name:
            message = f"{path.removeprefix(name).lstrip('.')}: {message}"
        if target is None:
            draft.general_errors.append(f"{path}: {message}" if path else message)
        else:
            target.add_error(name, message)


def _locate(draft: Draft, path: str, message: str) -> tuple[forms.Form | None, str | None]:
    if path in draft.flow_form.fields:
        return draft.flow_form, path
    if path.startswith("input_schema."):
        return draft.flow_form, "input_schema"
    if path.startswith("on_flow_end"):
        return draft.flow_form, "on_flow_end"
    match = _PATH_RE.match(path)
    if not match:
        return None, None
    kind, index, key, rest = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    forms_list = draft.task_forms if kind == "tasks" else draft.condition_forms
    if index >= len(forms_list):
        return None, None
    form = forms_list[index]
    if kind == "conditions":
        names = {"outcome", "target_task_success", "target_task_failure"}
        return form, key if key in names else ("condition_name" if key == "name" else None)
    if key == "parameters":
        param = rest.lstrip(".").split(".")[0].split("[")[0]
        required = _REQUIRED_RE.match(message)
        if not param and required:
            param = required.group(1)
        if param in form.param_names:
            return form, PARAM_PREFIX + param
        return form, "params_extra" if form.shows_extra else None
    if key in {"name", "task_type", "description", "timeout_seconds"}:
        return form, key
    return form, None


# The row buttons: each posts the form and shows it again, changed.
ROW_ACTIONS = ("add", "remove", "up", "down", "refresh")


def with_row_action(draft: Draft, document: dict[str, Any], action: str, row: str) -> dict:
    """``document`` (read from ``draft``) after a row button: ``add`` a blank task, ``remove``
    row ``row`` (the number in its prefix ``tasks-<row>``) with its condition, move it ``up``
    or ``down``; ``refresh`` (another type chosen) changes nothing. A row that is gone, or
    one that is blank, changes nothing either."""
    tasks = list(document["tasks"])
    conditions = document.get("conditions", [])
    # The row's place in the document: blank rows are not in it, and the user may have
    # reordered them.
    position = {id(form): i for i, form in enumerate(draft.task_forms)}
    index = next(
        (position.get(id(f)) for f in draft.formset.forms if f.prefix == f"tasks-{row}"),
        None,
    )
    if action == "add":
        tasks.append({})
    elif index is not None and action == "remove":
        removed = tasks.pop(index)
        conditions = [c for c in conditions if c["source_task"] != removed.get("name")]
    elif index is not None and action in ("up", "down"):
        other = index - 1 if action == "up" else index + 1
        if 0 <= other < len(tasks):
            tasks[index], tasks[other] = tasks[other], tasks[index]
    return {**document, "tasks": tasks, "conditions": conditions}


def too_big_for_form(document: Any) -> bool:
    """Past FLOW_BUILDER_MAX_TASKS the form view is not offered: each row's target selects
    list every task, so its HTML and rendering time grow with the square of the count (a
    500-task flow took 22 s and 22 MB). The JSON tab edits any size."""
    return task_count(document) > settings.FLOW_BUILDER_MAX_TASKS


def parse_json_document(text: str) -> tuple[Any, str]:
    """(document, "") or (None, a message saying where the JSON is broken)."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."


def pretty(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)
