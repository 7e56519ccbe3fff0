"""The builder page's requests: what the page shows (``BuilderPage``) and what one POST of
it asks for (``read_post``).

A POST comes from either tab (the form, or the JSON text) with an ``action``: switch tab,
press a row button, import a file, export, or save. ``read_post`` reads it into a document
(through the forms in ``builder``) and says what follows: show the page again, send the
document as a download, store it, or reload the page. It writes nothing and builds no
response: storing is the view's call to ``services.flow_store``, whose refusal ``refused``
puts back on the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from django.contrib.messages import ERROR, INFO
from django.core.files.uploadedfile import UploadedFile

from flows import vault
from flows.definition import unstorable_problem, unwrap
from flows.models import Flow
from flows.registry import default_registry
from flows.web import presenters
from flows.web.builder import (
    REFERENCE_SUGGESTIONS,
    ROW_ACTIONS,
    Draft,
    attach_errors,
    bind_draft,
    document_from_draft,
    draft_from_document,
    parse_json_document,
    pretty,
    too_big_for_form,
    with_row_action,
)
from flows.web.graph import task_count

Errors = list[dict[str, str]]


@dataclass
class BuilderPage:
    """What the builder page shows: the form tab (``draft``) or the JSON tab (``text`` and
    its ``json_errors``), and the graph of ``document`` when there is one."""

    draft: Draft | None = None
    text: str | None = None
    json_errors: Errors = field(default_factory=list)
    document: Any = None
    status: int = 200

    def context(self, flow: Flow | None) -> dict[str, Any]:
        document = self.document
        return {
            "flow": flow,
            "mode": "json" if self.draft is None else "builder",
            "draft": self.draft,
            "document_text": self.text,
            "json_errors": self.json_errors,
            # No graph of a document holding text no page can show (it is refused, with where).
            "graph": presenters.graph_view(document)
            if isinstance(document, dict) and not unstorable_problem(document, "")
            else None,
            "task_count": task_count(document),
            "form_max_tasks": settings.FLOW_BUILDER_MAX_TASKS,
            "types": sorted(default_registry().types.values(), key=lambda t: t.name),
            # Names only (never a value): the text parameters suggest ${secrets.NAME}.
            "secret_names_list": REFERENCE_SUGGESTIONS,
            "secret_names": sorted(vault.known_names()),
        }


@dataclass
class Next:
    """What one POST asks for. ``page``: show ``page``. ``export``: send ``document`` as
    ``filename``. ``save``: store ``document``; if the service refuses it, show ``refused``.
    ``reload``: nothing to act on, the page again. ``message`` (level, text) is said first."""

    kind: Literal["page", "export", "save", "reload"]
    page: BuilderPage | None = None
    document: Any = None
    filename: str = ""
    message: tuple[int, str] | None = None

    def refused(self, errors: Errors) -> BuilderPage:
        """The page that was posted, with the errors that stop it being saved: on the JSON
        tab under the text, on the form next to each field."""
        assert self.page is not None
        if self.page.draft is None:
            self.page.json_errors = errors
        else:
            attach_errors(self.page.draft, errors)
        return self.page


def first_page(flow: Flow | None) -> BuilderPage:
    """The page as a GET shows it: the flow (or a new one with one blank task), on the form
    tab unless it is too big for it."""
    document = flow.definition if flow else {"id": "", "tasks": [{}]}
    if too_big_for_form(document):
        return BuilderPage(text=pretty(document), document=document)
    draft, _ = draft_from_document(document, editing=flow is not None)
    return BuilderPage(draft=draft, document=document)


def read_post(
    data: Mapping[str, Any], files: Mapping[str, UploadedFile], *, flow_id: str | None
) -> Next:
    """What a POST of the builder asks for; ``flow_id`` is the flow the page edits (None on
    the new-flow page)."""
    action, _, row = data.get("action", "save").partition(":")
    if action == "import":
        return _import(files.get("import_file"), flow_id)
    if data.get("mode") == "json":
        text = data.get("document", "")
        document, problem = parse_json_document(text)
        if problem:
            return _show(_json_page(text, [{"field": "", "message": problem}], status=400))
        posted = BuilderPage(text=text, status=400)
    else:
        draft = bind_draft(data, editing=flow_id is not None, initial_id=flow_id or "")
        document = document_from_draft(draft)
        if document is None:
            draft.general_errors.append("Some fields need fixing first (marked below).")
            return _show(BuilderPage(draft=draft, status=400))
        if action in ROW_ACTIONS:
            return _show(_form_page(with_row_action(draft, document, action, row), flow_id))
        posted = BuilderPage(draft=draft, document=document, status=400)
    return _act(action, document, posted, flow_id)


def _act(action: str, document: Any, posted: BuilderPage, flow_id: str | None) -> Next:
    """A tab switch, an export or a save of a document read from the page ``posted``."""
    if action == "json":
        return _show(_json_page(pretty(document), [], document=document))
    if action == "builder":
        return _show(_form_page(document, flow_id))
    if action == "export":
        doc_id = document.get("id") if isinstance(document, dict) else None
        return Next("export", document=document, filename=f"{doc_id or 'flow'}.json")
    save = Next("save", page=posted, document=document)
    errors = _identity_errors(document, flow_id)
    return _show(save.refused(errors)) if errors else save


def _identity_errors(document: Any, flow_id: str | None) -> Errors:
    """The page edits one flow; the new-flow page never overwrites an existing one."""
    doc = unwrap(document) if isinstance(document, dict) else {}
    doc_id = doc.get("id") if isinstance(doc, dict) else None
    if flow_id is not None and doc_id != flow_id:
        message = f"This page edits flow '{flow_id}'; the id cannot change here."
        return [{"field": "id", "message": message}]
    if flow_id is None and isinstance(doc_id, str) and Flow.objects.filter(pk=doc_id).exists():
        message = f"A flow '{doc_id}' exists already: edit it instead, or choose another id."
        return [{"field": "id", "message": message}]
    return []


def _import(upload: UploadedFile | None, flow_id: str | None) -> Next:
    """A .json file read into the form (on the edit page, under the edited flow's id)."""
    if upload is None:
        return Next("reload", message=(ERROR, "Choose a .json file to import."))
    document, problem = parse_json_document(upload.read().decode("utf-8", "replace"))
    if problem:
        return _show(_json_page("", [{"field": "import_file", "message": problem}], status=400))
    if flow_id is not None and isinstance(document, dict):
        document = {**unwrap(document), "id": flow_id}
    page = _form_page(document, flow_id)
    return Next("page", page=page, message=(INFO, f"Imported {upload.name}. Review it, then save."))


def _form_page(document: Any, flow_id: str | None) -> BuilderPage:
    """``document`` on the form tab, saying what the form cannot show."""
    if too_big_for_form(document):
        # Its form would take seconds and megabytes to render: the JSON tab edits it.
        return _json_page(pretty(document), [], document=document)
    draft, dropped = draft_from_document(document, editing=flow_id is not None)
    if flow_id is not None:
        draft.flow_form.initial["id"] = flow_id
    for item in dropped:
        draft.general_errors.append(f"Not shown in the builder: {item}.")
    return BuilderPage(draft=draft, document=document)


def _json_page(
    text: str, errors: Errors, *, document: Any = None, status: int = 200
) -> BuilderPage:
    return BuilderPage(text=text, json_errors=errors, document=document, status=status)


def _show(page: BuilderPage) -> Next:
    return Next("page", page=page)
