"""Discover task types from ``task_<type>.py`` files and describe them.

A broken or misnamed module never stops anything from starting: it is logged and kept in
``errors`` so that validation can name it when a flow uses that type.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema

from tasks.base_task import BaseTask

logger = logging.getLogger("flows.registry")


def class_name_for(task_type: str) -> str:
    """``fetch_data`` -> ``FetchDataTask`` (the seed's naming rule)."""
    return "".join(part.capitalize() for part in task_type.split("_")) + "Task"


@dataclass(frozen=True)
class TaskType:
    name: str
    cls: type[BaseTask]
    module_path: str

    @property
    def description(self) -> str:
        # The class's own docstring, not one inherited from BaseTask.
        own_doc = inspect.cleandoc(self.cls.__dict__.get("__doc__") or "")
        return (getattr(self.cls, "description", "") or own_doc).strip()

    @property
    def parameters_schema(self) -> dict[str, Any]:
        return getattr(self.cls, "parameters_schema", None) or {"type": "object"}

    @property
    def default_timeout(self) -> float | None:
        value = getattr(self.cls, "default_timeout", None)
        return float(value) if value else None

    @property
    def default_retry(self) -> dict[str, Any] | None:
        return getattr(self.cls, "default_retry", None)

    @property
    def default_limits(self) -> list[str] | None:
        return getattr(self.cls, "default_limits", None)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters_schema": self.parameters_schema,
            "default_timeout": self.default_timeout,
            "default_retry": self.default_retry,
        }


@dataclass(frozen=True)
class RegistrySnapshot:
    """Task types and load errors at one moment; look-ups here never rescan the folder."""

    types: dict[str, TaskType]
    errors: dict[str, str]

    def get(self, task_type: str) -> TaskType | None:
        return self.types.get(task_type)

    def problem(self, task_type: str) -> str | None:
        """Why ``task_type`` cannot be used, or None when it can."""
        if task_type in self.types:
            return None
        if task_type in self.errors:
            return f"task type '{task_type}' failed to load: {self.errors[task_type]}"
        known = ", ".join(sorted(self.types)) or "none"
        return f"unknown task type '{task_type}' (registered: {known})"


class TaskRegistry:
    """Task types found in one folder; rescanned when a file there is added or changed."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._fingerprint: tuple[tuple[str, float, int], ...] | None = None
        self._types: dict[str, TaskType] = {}
        self._errors: dict[str, str] = {}

    # -- public ------------------------------------------------------------------------------
    @property
    def types(self) -> dict[str, TaskType]:
        self.refresh()
        return self._types

    @property
    def errors(self) -> dict[str, str]:
        """Task types whose module failed to load, with the reason."""
        self.refresh()
        return self._errors

    @property
    def fingerprint(self) -> tuple[tuple[str, float, int], ...] | None:
        """Changes whenever a plugin file is added, removed or changed (after a refresh)."""
        return self._fingerprint

    def snapshot(self) -> RegistrySnapshot:
        """The task types as of now (one rescan), for many look-ups in a row."""
        self.refresh()
        return RegistrySnapshot(self._types, self._errors)

    def get(self, task_type: str) -> TaskType | None:
        return self.snapshot().get(task_type)

    def problem(self, task_type: str) -> str | None:
        """Why ``task_type`` cannot be used, or None when it can."""
        return self.snapshot().problem(task_type)

    def refresh(self) -> None:
        fingerprint = self._scan()
        if fingerprint == self._fingerprint:
            return
        with self._lock:
            if fingerprint == self._fingerprint:
                return
            self._load(fingerprint)

    # -- internals ---------------------------------------------------------------------------
    def _scan(self) -> tuple[tuple[str, float, int], ...]:
        try:
            files = sorted(self.folder.glob("task_*.py"))
        except OSError:
            return ()
        out = []
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path.name, st.st_mtime, st.st_size))
        return tuple(out)

    def _module_name(self, stem: str) -> str:
        # The project's own folder keeps the importable names ``tasks.task_x``; any other folder
        # gets a private namespace so two folders never overwrite each other's modules.
        if (self.folder / "__init__.py").exists() and self.folder.name == "tasks":
            return f"tasks.{stem}"
        digest = hashlib.sha1(str(self.folder).encode()).hexdigest()[:10]  # noqa: S324
        return f"_flow_plugins_{digest}.{stem}"

    def _load(self, fingerprint: tuple[tuple[str, float, int], ...]) -> None:
        types: dict[str, TaskType] = {}
        errors: dict[str, str] = {}
        for filename, _mtime, _size in fingerprint:
            stem = filename[:-3]
            task_type = stem[len("task_") :]
            path = self.folder / filename
            try:
                cls = self._load_class(path, stem, task_type)
            except (Exception, SystemExit) as exc:  # a plugin may fail in any way, even exit
                message = f"{type(exc).__name__}: {exc}"
                errors[task_type] = message
                logger.error("task module %s failed to load: %s", path, message)
                continue
            types[task_type] = TaskType(task_type, cls, str(path))
            logger.info("task module %s loaded as task type '%s'", path, task_type)
        self._types, self._errors, self._fingerprint = types, errors, fingerprint

    def _load_class(self, path: Path, stem: str, task_type: str) -> type[BaseTask]:
        module_name = self._module_name(stem)
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        # As the import system does: the package knows its submodule, so `tasks.task_x`
        # resolves the same however it was first loaded.
        package_name, _, attr = module_name.rpartition(".")
        if package_name in sys.modules:
            setattr(sys.modules[package_name], attr, module)
        expected = class_name_for(task_type)
        cls = getattr(module, expected, None)
        if cls is None:
            raise LookupError(f"{path.name} defines no class {expected}")
        if not (inspect.isclass(cls) and issubclass(cls, BaseTask)):
            raise TypeError(f"{expected} in {path.name} is not a subclass of BaseTask")
        if not inspect.iscoroutinefunction(cls.run):
            raise TypeError(f"{expected}.run must be declared 'async def run(self)'")
        if inspect.isabstract(cls):
            raise TypeError(f"{expected} does not implement run()")
        schema = getattr(cls, "parameters_schema", None) or {"type": "object"}
        jsonschema.Draft202012Validator.check_schema(schema)
        return cls


_default: TaskRegistry | None = None


def default_registry() -> TaskRegistry:
    """The registry of ``settings.FLOW_TASKS_DIR`` (the project's ``tasks/`` by default)."""
    global _default
    from django.conf import settings

    folder = Path(settings.FLOW_TASKS_DIR).resolve()
    if _default is None or _default.folder != folder:
        _default = TaskRegistry(folder)
    return _default
