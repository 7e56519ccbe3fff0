"""Operator pages: thin views over ``flows.services``, ``flows.selectors`` and the models'
QuerySet methods."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from flows import selectors, services
from flows.definition import unstorable_problem
from flows.models import Execution, ExecutionStatus, Flow, FlowVersion, TaskRun
from flows.registry import default_registry
from flows.web import builder, presenters
from flows.web.forms import ExecutionFilterForm, RunForm, ScheduleForm, SignalForm

PAGE_SIZE = 50
T = TypeVar("T")


def needs(permission: str) -> Any:
    """The page needs this permission (roles are groups, migration 0005); 403 otherwise."""
    return permission_required(permission, raise_exception=True)


def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for whatever a page links: our SVG icon (its
    static URL carries a content hash in production, so the redirect itself is cached a day)."""
    response = redirect(static("flows/favicon.svg"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


# -- dashboard -------------------------------------------------------------------------------
@login_required
@needs("flows.view_execution")
def home(request: HttpRequest) -> HttpResponse:
    """Executions by status, recent executions, failing flows and the workers' health."""
    now = timezone.now()
    executions = Execution.objects
    context = {
        "status_rows": presenters.status_table(
            executions.status_counts(now - timedelta(days=1)),
            executions.status_counts(now - timedelta(days=7)),
        ),
        "recent": executions.for_list().filter(parent_step__isnull=True)[:10],
        "failing": executions.failing_flows(now - timedelta(days=7)),
        "workers": presenters.worker_health(),
        "flow_count": Flow.objects.count(),
    }
    return render(request, "flows/dashboard.html", context)


# -- flows -----------------------------------------------------------------------------------
@login_required
@needs("flows.view_flow")
def flow_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    flows = Flow.objects.search(query).with_last_run().order_by("-updated_at")
    page = Paginator(flows, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"flow": flow, "missing": presenters.missing_types(flow.definition)} for flow in page]
    return render(request, "flows/flow_list.html", {"page": page, "rows": rows, "q": query})


@login_required
@needs("flows.view_flow")
def flow_detail(request: HttpRequest, flow_id: str) -> HttpResponse:
    flow = _flow_or_404(flow_id)
    return render(
        request,
        "flows/flow_detail.html",
        {
            "flow": flow,
            "graph": presenters.graph_view(flow.definition),
            "problems": presenters.flow_problems(flow.definition),
            "versions": selectors.flow_version_list(flow=flow),
            "executions": Execution.objects.filter(flow=flow, parent_step__isnull=True).for_list()[
                :10
            ],
            "run_form": RunForm(),
            "schedule": getattr(flow, "schedule", None),
            "schedule_form": _schedule_form(flow),
        },
    )


def _schedule_form(flow: Flow) -> ScheduleForm:
    schedule = getattr(flow, "schedule", None)
    if schedule is None:
        return ScheduleForm()
    return ScheduleForm(
        initial={"cron": schedule.cron, "enabled": schedule.enabled, "input": schedule.input}
    )


@login_required
@needs("flows.change_flow")
@require_POST
def flow_schedule(request: HttpRequest, flow_id: str) -> HttpResponse:
    """Save (create, change, pause) or delete the flow's cron schedule."""
    flow = _flow_or_404(flow_id)
    if request.POST.get("action") == "delete":
        try:
            services.flow_schedule_delete(flow_id=flow.id)
            messages.success(request, "Schedule deleted.")
        except services.ServiceError as exc:
            messages.error(request, _explain(exc))
        return redirect("flow_detail", flow_id=flow.id)
    form = ScheduleForm(request.POST)
    if form.is_valid():
        try:
            schedule = services.flow_schedule_set(
                flow_id=flow.id,
                cron=form.cleaned_data["cron"],
                enabled=form.cleaned_data["enabled"],
                input=form.cleaned_data["input"],
            )
            state = "saved" if schedule.enabled else "saved, paused"
            messages.success(request, f"Schedule {state}: {schedule.cron}")
        except services.ServiceError as exc:
            messages.error(request, _explain(exc))
    else:
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
    return redirect("flow_detail", flow_id=flow.id)


@login_required
@needs("flows.view_flow")
def flow_version(request: HttpRequest, flow_id: str, version: int) -> HttpResponse:
    stored = _version_or_404(flow_id, version)
    return render(
        request,
        "flows/flow_version.html",
        {
            "flow": stored.flow,
            "stored": stored,
            "graph": presenters.graph_view(stored.definition),
            "document": builder.pretty(stored.definition),
        },
    )


@login_required
@needs("flows.view_flow")
def flow_export(request: HttpRequest, flow_id: str, version: int) -> HttpResponse:
    stored = _version_or_404(flow_id, version)
    return _download(stored.definition, f"{flow_id}-v{version}.json")


@login_required
@needs("flows.start_execution")
@require_POST
def flow_run(request: HttpRequest, flow_id: str) -> HttpResponse:
    """Start an execution of the flow's current version, then show it."""
    flow = _flow_or_404(flow_id)
    form = RunForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Input: {' '.join(form.errors['input'])}")
        return redirect("flow_detail", flow_id=flow.id)
    current = _version_or_404(flow.id, None)
    try:
        execution, _ = services.execution_submit(
            flow_version=current, user=request.user, input=form.cleaned_data["input"]
        )
    except services.ServiceError as exc:
        messages.error(request, _explain(exc))
        return redirect("flow_detail", flow_id=flow.id)
    return redirect("execution_detail", execution_id=execution.id)


@login_required
@needs("flows.delete_flow")
def flow_delete(request: HttpRequest, flow_id: str) -> HttpResponse:
    flow = _flow_or_404(flow_id)
    if request.method == "POST":
        try:
            services.flow_delete(flow_id=flow.id)
        except services.ServiceError as exc:
            messages.error(request, _explain(exc))
            return redirect("flow_detail", flow_id=flow.id)
        messages.success(request, f"Flow {flow.id} and its executions were deleted.")
        return redirect("flow_list")
    count = flow.executions.top_level().count()  # its children go with them, as their steps
    return render(request, "flows/flow_delete.html", {"flow": flow, "count": count})


# -- builder ---------------------------------------------------------------------------------
@login_required
@needs("flows.add_flow")
def flow_new(request: HttpRequest) -> HttpResponse:
    return _builder(request, None)


@login_required
@needs("flows.change_flow")
def flow_edit(request: HttpRequest, flow_id: str) -> HttpResponse:
    return _builder(request, _flow_or_404(flow_id))


@login_required
@needs("flows.view_flow")
def builder_task_fields(request: HttpRequest) -> HttpResponse:
    """The parameter fields of one task row for a task type (the builder's script asks)."""
    prefix = request.GET.get("prefix", "")
    if not prefix.startswith("tasks-") or not prefix[6:].isdigit():
        raise Http404("bad prefix")
    form = builder.TaskForm(prefix=prefix, initial={"task_type": request.GET.get("type", "")})
    return render(request, "flows/_task_params.html", {"form": form})


def _builder(request: HttpRequest, flow: Flow | None) -> HttpResponse:
    if request.method != "POST":
        document = flow.definition if flow else {"id": "", "tasks": [{}]}
        if builder.too_big_for_form(document):
            return _render_builder(request, flow, text=builder.pretty(document), document=document)
        draft, _ = builder.draft_from_document(document, editing=flow is not None)
        return _render_builder(request, flow, draft=draft, document=document)
    return _BuilderPost(request, flow).response()


class _BuilderPost:
    """One submission of the builder (either tab): work out the document, then act on it."""

    ROW_ACTIONS = ("add", "remove", "up", "down", "refresh")

    def __init__(self, request: HttpRequest, flow: Flow | None) -> None:
        self.request, self.flow = request, flow
        self.mode = "json" if request.POST.get("mode") == "json" else "builder"
        self.action, _, self.arg = request.POST.get("action", "save").partition(":")
        self.editing = flow is not None

    def response(self) -> HttpResponse:
        if self.action == "import":
            return self._import()
        if self.mode == "json":
            text = self.request.POST.get("document", "")
            document, problem = builder.parse_json_document(text)
            if problem:
                return self._json_page(text, [{"field": "", "message": problem}], status=400)
            draft = None
        else:
            draft = builder.bind_draft(
                self.request.POST,
                editing=self.editing,
                initial_id=self.flow.id if self.flow else "",
            )
            document = builder.document_from_draft(draft)
            if document is None:
                draft.general_errors.append("Some fields need fixing first (marked below).")
                return _render_builder(self.request, self.flow, draft=draft, status=400)
            if self.action in self.ROW_ACTIONS:
                return self._row_action(draft, document)
        return self._act(document, draft)

    def _act(self, document: Any, draft: builder.Draft | None) -> HttpResponse:
        if self.action == "json":
            return self._json_page(builder.pretty(document), [], document=document)
        if self.action == "builder":
            return self._builder_from(document)
        if self.action == "export":
            doc_id = document.get("id") if isinstance(document, dict) else None
            return _download(document, f"{doc_id or 'flow'}.json")
        errors = self._identity_errors(document)
        if not errors:
            try:
                version, stored = services.flow_store(document=document, user=self.request.user)
            except services.InvalidFlow as exc:
                errors = exc.errors
            else:
                messages.success(
                    self.request,
                    f"Saved {version.flow_id} version {version.version}."
                    if stored
                    else f"No changes: {version.flow_id} version {version.version} "
                    "is already this document.",
                )
                return redirect("flow_detail", flow_id=version.flow_id)
        if draft is None:
            return self._json_page(self.request.POST.get("document", ""), errors, status=400)
        builder.attach_errors(draft, errors)
        return _render_builder(self.request, self.flow, draft=draft, document=document, status=400)

    def _identity_errors(self, document: Any) -> list[dict[str, str]]:
        """The page edits one flow; the new-flow page never overwrites an existing one."""
        doc = builder.unwrap(document) if isinstance(document, dict) else {}
        doc_id = doc.get("id") if isinstance(doc, dict) else None
        if self.flow is not None and doc_id != self.flow.id:
            message = f"This page edits flow '{self.flow.id}'; the id cannot change here."
            return [{"field": "id", "message": message}]
        if self.flow is None and isinstance(doc_id, str) and Flow.objects.filter(pk=doc_id):
            message = f"A flow '{doc_id}' exists already: edit it instead, or choose another id."
            return [{"field": "id", "message": message}]
        return []

    def _row_action(self, draft: builder.Draft, document: dict[str, Any]) -> HttpResponse:
        tasks = list(document["tasks"])
        conditions = document.get("conditions", [])
        position = {id(form): i for i, form in enumerate(draft.task_forms)}
        index = next(
            (position.get(id(f)) for f in draft.formset.forms if f.prefix == f"tasks-{self.arg}"),
            None,
        )
        if self.action == "add":
            tasks.append({})
        elif index is not None and self.action == "remove":
            removed = tasks.pop(index)
            conditions = [c for c in conditions if c["source_task"] != removed.get("name")]
        elif index is not None and self.action in ("up", "down"):
            other = index - 1 if self.action == "up" else index + 1
            if 0 <= other < len(tasks):
                tasks[index], tasks[other] = tasks[other], tasks[index]
        return self._builder_from({**document, "tasks": tasks, "conditions": conditions})

    def _import(self) -> HttpResponse:
        upload = self.request.FILES.get("import_file")
        if upload is None:
            messages.error(self.request, "Choose a .json file to import.")
            return redirect(self.request.path)
        document, problem = builder.parse_json_document(upload.read().decode("utf-8", "replace"))
        if problem:
            return self._json_page("", [{"field": "import_file", "message": problem}], status=400)
        messages.info(self.request, f"Imported {upload.name}. Review it, then save.")
        if self.flow is not None and isinstance(document, dict):
            document = {**builder.unwrap(document), "id": self.flow.id}
        return self._builder_from(document)

    def _builder_from(self, document: Any) -> HttpResponse:
        if builder.too_big_for_form(document):
            # Its form would take seconds and megabytes to render: the JSON tab edits it.
            return self._json_page(builder.pretty(document), [], document=document)
        draft, dropped = builder.draft_from_document(document, editing=self.editing)
        if self.flow is not None:
            draft.flow_form.initial["id"] = self.flow.id
        for item in dropped:
            draft.general_errors.append(f"Not shown in the builder: {item}.")
        return _render_builder(self.request, self.flow, draft=draft, document=document)

    def _json_page(
        self, text: str, errors: list[dict[str, str]], *, document: Any = None, status: int = 200
    ) -> HttpResponse:
        return _render_builder(
            self.request, self.flow, text=text, json_errors=errors, document=document, status=status
        )


def _render_builder(
    request: HttpRequest,
    flow: Flow | None,
    *,
    draft: builder.Draft | None = None,
    text: str | None = None,
    json_errors: list[dict[str, str]] | None = None,
    document: Any = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "flow": flow,
        "mode": "json" if draft is None else "builder",
        "draft": draft,
        "document_text": text,
        "json_errors": json_errors or [],
        # No graph of a document holding text no page can show (it is refused, with where).
        "graph": presenters.graph_view(document)
        if isinstance(document, dict) and not unstorable_problem(document, "")
        else None,
        "task_count": builder.task_count(document),
        "form_max_tasks": settings.FLOW_BUILDER_MAX_TASKS,
        "types": sorted(default_registry().types.values(), key=lambda t: t.name),
    }
    return render(request, "flows/builder.html", context, status=status)


# -- executions ------------------------------------------------------------------------------
@login_required
@needs("flows.view_execution")
def execution_list(request: HttpRequest) -> HttpResponse:
    form = ExecutionFilterForm(request.GET or None)
    # Top-level only: children are listed on their parent's page (execution_children).
    top_level = Execution.objects.for_list().filter(parent_step__isnull=True)
    executions = top_level.matching(**form.filters())
    page = Paginator(executions, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "flows/execution_list.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )


@login_required
@needs("flows.delete_execution")
@require_POST
def execution_bulk_delete(request: HttpRequest) -> HttpResponse:
    """First POST shows what will be deleted; the POST with ``confirm`` deletes."""
    ids = [i for i in request.POST.getlist("ids") if _is_uuid(i)]
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = ""
    back = back or reverse("execution_list")
    if not ids:
        messages.error(request, "Select at least one execution to delete.")
        return redirect(back)
    if request.POST.get("confirm") != "yes":
        chosen = Execution.objects.filter(pk__in=ids).for_list()
        return render(request, "flows/execution_delete.html", {"executions": chosen, "next": back})
    deleted = 0
    for execution_id in ids:
        try:
            services.execution_delete(execution_id=execution_id)
            deleted += 1
        except services.NotFound:
            continue
    messages.success(request, f"Deleted {deleted} execution{'s' if deleted != 1 else ''}.")
    return redirect(back)


@login_required
@needs("flows.view_execution")
def execution_detail(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    view = presenters.execution_view(_execution_or_404(execution_id))
    return render(request, "flows/execution_detail.html", {"view": view})


@login_required
@needs("flows.view_execution")
def execution_input(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """The whole input as a .json download (the page shows it cut past FLOW_SHOW_MAX_BYTES)."""
    execution = _execution_or_404(execution_id)
    return _download(execution.input, f"execution-{execution.id}-input.json")


@login_required
@needs("flows.view_execution")
def execution_step_result(request: HttpRequest, execution_id: uuid.UUID, seq: int) -> HttpResponse:
    """A step's whole result as a .json download (the page shows it cut past the limit)."""
    execution = _execution_or_404(execution_id)
    step = get_object_or_404(TaskRun.objects.only("result"), execution=execution, seq=seq)
    return _download(step.result, f"execution-{execution.id}-step-{seq}-result.json")


@login_required
@needs("flows.view_execution")
def execution_live(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """The live region alone: the execution page's script polls it while the run is active."""
    view = presenters.execution_view(_execution_or_404(execution_id))
    return render(request, "flows/_execution_status.html", {"view": view})


@login_required
@needs("flows.view_execution")
@require_POST
def execution_signal(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """Approve or reject the step that waits for a signal (the API's signal, as a form)."""
    if not request.user.has_perm(SIGNAL):
        raise PermissionDenied(f"your role may not answer signals (needs permission '{SIGNAL}')")
    form = SignalForm(request.POST)
    if not form.is_valid():
        if set(form.errors) - {"payload", "comment"}:
            # A name or decision the page never sends: said at the top, as the service would.
            messages.error(request, "That answer was not understood; use Approve or Reject.")
            return redirect("execution_detail", execution_id=execution_id)
        # A payload or comment to fix: the page again, the error next to its field and what
        # was typed kept; nothing was sent.
        view = presenters.execution_view(_execution_or_404(execution_id))
        context = {"view": view, "signal_form": form}
        return render(request, "flows/execution_detail.html", context, status=400)
    decision = form.cleaned_data["decision"]
    try:
        services.execution_signal(
            execution_id=execution_id,
            name=form.cleaned_data["name"],
            decision=decision,
            payload=form.cleaned_data["payload"],
            comment=form.cleaned_data["comment"],
            user=request.user,
        )
    except services.NotFound as exc:
        raise Http404(exc.message) from None
    except services.ServiceError as exc:
        messages.error(request, _explain(exc))
    else:
        messages.success(
            request,
            "Approved: the execution goes on."
            if decision == "approve"
            else "Rejected: the step fails and its failure route applies.",
        )
    return redirect("execution_detail", execution_id=execution_id)


@login_required
@needs("flows.view_execution")
def execution_children(request: HttpRequest, execution_id: uuid.UUID, seq: int) -> HttpResponse:
    """The children of one control step (branches, map items, a sub-flow), 50 a page, in item
    order, filtered by status."""
    execution = _execution_or_404(execution_id)
    step = get_object_or_404(TaskRun.objects.select_related("fanout"), execution=execution, seq=seq)
    status = request.GET.get("status", "")
    children = presenters.children_rows(step, status if status in ExecutionStatus.values else "")
    page = Paginator(children, PAGE_SIZE).get_page(request.GET.get("page"))
    for child in page:
        child.item_preview = json.dumps(child.item, ensure_ascii=False)  # type: ignore[attr-defined]
    presenters.mark_waiting_for_signal(list(page))
    moved = None if page.object_list or status else presenters.taken_over_at(step)
    context = {
        "execution": execution,
        "step": step,
        "taken_over_at": moved,
        "counts": presenters.children_counts(step),
        "page": page,
        "status": status,
        "statuses": ExecutionStatus.values,
        "query": f"status={status}" if status else "",
    }
    return render(request, "flows/execution_children.html", context)


@login_required
@needs("flows.view_execution")
@require_POST
def execution_action(request: HttpRequest, execution_id: uuid.UUID, action: str) -> HttpResponse:
    """execute (a CREATED one), cancel, pause, resume, redrive, or rerun (a new execution of
    the same version)."""
    if action not in EXECUTION_ACTIONS:
        raise Http404(f"unknown action {action}")
    permission, service, done = EXECUTION_ACTIONS[action]
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"your role may not {action} executions")
    try:
        if action == "rerun":  # a new execution: show that one
            new = services.execution_rerun(execution_id=execution_id, user=request.user)
            messages.success(request, done)
            return redirect("execution_detail", execution_id=new.id)
        service(execution_id=execution_id)
        messages.success(request, done)
    except services.NotFound as exc:
        raise Http404(exc.message) from None
    except services.ServiceError as exc:
        messages.error(request, _explain(exc))
    return redirect("execution_detail", execution_id=execution_id)


# -- helpers ---------------------------------------------------------------------------------
# Each execution action: the permission it needs (granted by the roles, migrations 0005 and
# 0006), the service it calls and what the page says after it. Answering a signal needs
# SIGNAL (migration 0010), not START: an approver may approve without running anything.
START, CANCEL = "flows.start_execution", "flows.cancel_execution"
SIGNAL = "flows.signal_execution"
EXECUTION_ACTIONS: dict[str, tuple[str, Any, str]] = {
    "execute": (START, services.execution_start, "Execution started."),
    "resume": (START, services.execution_resume, "Resumed."),
    "redrive": (START, services.execution_redrive, "Redriven from the step that stopped it."),
    "rerun": (START, services.execution_rerun, "Started a new execution of the same version."),
    "cancel": (CANCEL, services.execution_cancel, "Cancel requested."),
    "pause": (
        CANCEL,
        services.execution_pause,
        "Pausing: the step in flight finishes, then it waits.",
    ),
}


def _or_404(read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``read(...)``, a selector, with its NotFound as the page's 404."""
    try:
        return read(*args, **kwargs)
    except services.NotFound as exc:
        raise Http404(exc.message) from None


def _flow_or_404(flow_id: str) -> Flow:
    return _or_404(selectors.flow_get, flow_id)


def _version_or_404(flow_id: str, version: int | None) -> FlowVersion:
    return _or_404(selectors.flow_version_get, flow_id=flow_id, version=version)


def _execution_or_404(execution_id: Any) -> Execution:
    return _or_404(selectors.execution_get, execution_id)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _explain(exc: services.ServiceError) -> str:
    details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors[:5] if e.get("field"))
    return f"{exc.message}" + (f" ({details})" if details and details not in exc.message else "")


def _download(document: Any, filename: str) -> HttpResponse:
    response = HttpResponse(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        content_type="application/json",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
