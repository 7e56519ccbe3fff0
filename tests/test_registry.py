"""Task plugin discovery: seed modules load unchanged, broken ones are reported, not fatal."""

from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.conf import settings

from flows import engine, services
from flows.definition import FlowValidationError, parse_flow
from flows.models import Execution, ExecutionStatus
from flows.registry import TaskRegistry, class_name_for, default_registry
from tasks.base_task import BaseTask
from tests.factories import sample_flow

# Modules written the way the original seed wrote them: typing.Dict, print, no description,
# no schema, no context; the constructor taking (name, parameters) positionally.
SEED_MODULES = {
    "fetch_data": """
        import asyncio
        import random
        from typing import Any, Dict

        from tasks.base_task import BaseTask


        class FetchDataTask(BaseTask):
            async def run(self) -> Dict[str, Any]:
                print(f"Executing task {self.name}: fetching data...")
                await asyncio.sleep(0.001)
                if random.random() < self.parameters.get("failure_rate", 0):
                    raise Exception(f"Simulated failure in task {self.name}")
                return {"message": "Data fetched successfully", "data": [1, 2, 3]}
    """,
    "process_data": """
        import asyncio
        from typing import Any, Dict

        from tasks.base_task import BaseTask


        class ProcessDataTask(BaseTask):
            def __init__(self, name: str, parameters: Dict[str, Any] = None):
                super().__init__(name, parameters)
                self.factor = self.parameters.get("factor", 2)

            async def run(self) -> Dict[str, Any]:
                print(f"Executing task {self.name}: processing data...")
                await asyncio.sleep(0.001)
                return {"message": "Data processed successfully", "factor": self.factor}
    """,
    "store_data": """
        import asyncio
        from typing import Any, Dict

        from tasks.base_task import BaseTask


        class StoreDataTask(BaseTask):
            async def run(self) -> Dict[str, Any]:
                print(f"Executing task {self.name}: storing data...")
                await asyncio.sleep(0.001)
                return {"message": "Data stored successfully"}
    """,
}

GOOD = """
    from tasks.base_task import BaseTask


    class {cls}(BaseTask):
        async def run(self):
            return {{"from": "{task_type}"}}
"""

BROKEN = {
    "syntax": (
        """
        from tasks.base_task import BaseTask


        class SyntaxTask(BaseTask):
            async def run(self)
                return {}
        """,
        "SyntaxError",
    ),
    "missing_import": (
        """
        import a_module_nobody_installed

        from tasks.base_task import BaseTask


        class MissingImportTask(BaseTask):
            async def run(self):
                return {}
        """,
        "ModuleNotFoundError: No module named 'a_module_nobody_installed'",
    ),
    "misnamed": (
        """
        from tasks.base_task import BaseTask


        class MisnamedTaskType(BaseTask):
            async def run(self):
                return {}
        """,
        "task_misnamed.py defines no class MisnamedTask",
    ),
    "not_async": (
        """
        from tasks.base_task import BaseTask


        class NotAsyncTask(BaseTask):
            def run(self):
                return {}
        """,
        "NotAsyncTask.run must be declared 'async def run(self)'",
    ),
    "not_base": (
        """
        class NotBaseTask:
            def __init__(self, name, parameters=None):
                self.name = name

            async def run(self):
                return {}
        """,
        "NotBaseTask in task_not_base.py is not a subclass of BaseTask",
    ),
    "bad_schema": (
        """
        from tasks.base_task import BaseTask


        class BadSchemaTask(BaseTask):
            parameters_schema = {"type": "object", "properties": {"n": {"type": "integr"}}}

            async def run(self):
                return {}
        """,
        "SchemaError",
    ),
    "no_run": (
        """
        from tasks.base_task import BaseTask


        class NoRunTask(BaseTask):
            pass
        """,
        "",
    ),
}


def write(folder: Path, task_type: str, source: str) -> Path:
    path = folder / f"task_{task_type}.py"
    path.write_text(textwrap.dedent(source))
    return path


def write_good(folder: Path, task_type: str) -> Path:
    return write(folder, task_type, GOOD.format(cls=class_name_for(task_type), task_type=task_type))


def run_with(registry: TaskRegistry, document: dict[str, Any]) -> Execution:
    version = services.flow_create(document=document, registry=registry)
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id, registry=registry)
    return engine.run_inline(execution.id, registry)


def one_task(task_type: str) -> dict[str, Any]:
    return {"id": "uses_" + task_type, "tasks": [{"name": "t", "task_type": task_type}]}


# --- The seed's contract ---------------------------------------------------------------------
def test_class_names_follow_the_seed_rule() -> None:
    assert class_name_for("fetch_data") == "FetchDataTask"
    assert class_name_for("noop") == "NoopTask"
    assert class_name_for("http_request") == "HttpRequestTask"


@pytest.mark.django_db
def test_seed_modules_load_and_run_the_seed_flow_unchanged(tmp_path, capsys) -> None:
    for task_type, source in SEED_MODULES.items():
        write(tmp_path, task_type, source)
    registry = TaskRegistry(tmp_path)
    assert registry.errors == {}
    assert sorted(registry.types) == ["fetch_data", "process_data", "store_data"]

    execution = run_with(registry, sample_flow())

    assert execution.status == ExecutionStatus.COMPLETED
    results = dict(execution.steps.values_list("task_name", "result"))
    assert results == {
        "task1": {"message": "Data fetched successfully", "data": [1, 2, 3]},
        "task2": {"message": "Data processed successfully", "factor": 2},
        "task3": {"message": "Data stored successfully"},
    }
    printed = capsys.readouterr().out
    assert "Executing task task1: fetching data..." in printed
    assert "Executing task task3: storing data..." in printed


@pytest.mark.django_db
def test_a_failing_seed_task_fails_its_step_like_in_the_seed(tmp_path) -> None:
    for task_type, source in SEED_MODULES.items():
        write(tmp_path, task_type, source)
    registry = TaskRegistry(tmp_path)
    document = sample_flow()
    document["flow"]["tasks"][0]["parameters"] = {"failure_rate": 1}

    execution = run_with(registry, document)

    assert execution.status == ExecutionStatus.FAILED
    assert list(execution.steps.values_list("task_name", "status")) == [("task1", "FAILURE")]
    assert "Simulated failure in task task1" in execution.error


def test_a_type_without_description_or_schema_is_described_with_defaults(tmp_path) -> None:
    write(tmp_path, "store_data", SEED_MODULES["store_data"])
    described = TaskRegistry(tmp_path).get("store_data").describe()
    assert described["name"] == "store_data"
    assert described["parameters_schema"] == {"type": "object"}
    assert described["default_timeout"] is None
    # Nothing was declared: the type must not borrow BaseTask's own docstring as its description.
    assert inspect.getdoc(BaseTask) not in described["description"]
    assert "Base class" not in described["description"]


def test_the_docstring_is_the_description_when_none_is_declared(tmp_path) -> None:
    write(
        tmp_path,
        "documented",
        '''
        from tasks.base_task import BaseTask


        class DocumentedTask(BaseTask):
            """Send the weekly report."""

            default_timeout = 12

            async def run(self):
                return {}
        ''',
    )
    described = TaskRegistry(tmp_path).get("documented").describe()
    assert described["description"] == "Send the weekly report."
    assert described["default_timeout"] == 12.0


# --- Broken modules --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task_type", "source", "reason"),
    [(name, source, reason) for name, (source, reason) in BROKEN.items()],
    ids=list(BROKEN),
)
def test_a_broken_module_is_reported_and_the_others_still_load(
    tmp_path, task_type, source, reason
) -> None:
    write_good(tmp_path, "before")
    write(tmp_path, task_type, source)
    write_good(tmp_path, "zzz_after")

    registry = TaskRegistry(tmp_path)

    assert task_type in registry.errors
    assert reason in registry.errors[task_type]
    assert task_type not in registry.types
    assert sorted(registry.types) == ["before", "zzz_after"]


@pytest.mark.parametrize(
    ("task_type", "source", "reason"),
    [(name, source, reason) for name, (source, reason) in BROKEN.items()],
    ids=list(BROKEN),
)
def test_a_flow_using_a_broken_type_gets_a_validation_error_naming_it(
    tmp_path, task_type, source, reason
) -> None:
    write_good(tmp_path, "fine")
    write(tmp_path, task_type, source)
    registry = TaskRegistry(tmp_path)
    document = {
        "id": "uses_broken",
        "tasks": [{"name": "a", "task_type": "fine"}, {"name": "b", "task_type": task_type}],
    }

    with pytest.raises(FlowValidationError) as caught:
        parse_flow(document, registry)

    [error] = caught.value.errors
    assert error.field == "tasks[1].task_type"
    assert f"task type '{task_type}' failed to load" in error.message
    assert reason in error.message


def test_a_module_that_calls_sys_exit_on_import_is_reported_not_fatal(tmp_path) -> None:
    write_good(tmp_path, "fine")
    write(
        tmp_path,
        "quits",
        """
        import sys

        sys.exit("this file is a script, not a plugin")
        """,
    )
    registry = TaskRegistry(tmp_path)

    assert "fine" in registry.types
    assert "quits" in registry.errors
    assert "SystemExit" in registry.errors["quits"]


def test_files_that_do_not_follow_the_naming_rule_are_ignored(tmp_path) -> None:
    write_good(tmp_path, "real")
    (tmp_path / "helpers.py").write_text("raise RuntimeError('not a plugin')\n")
    (tmp_path / "task_notes.txt").write_text("not python\n")
    registry = TaskRegistry(tmp_path)
    assert list(registry.types) == ["real"]
    assert registry.errors == {}


def test_an_unknown_type_is_a_validation_error_listing_the_registered_ones(tmp_path) -> None:
    write_good(tmp_path, "alpha")
    write_good(tmp_path, "beta")
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(one_task("gamma"), TaskRegistry(tmp_path))
    [error] = caught.value.errors
    assert error.field == "tasks[0].task_type"
    assert error.message == "unknown task type 'gamma' (registered: alpha, beta)"


# --- Rescanning ------------------------------------------------------------------------------
def test_a_module_added_after_the_first_scan_is_picked_up(tmp_path) -> None:
    write_good(tmp_path, "first")
    registry = TaskRegistry(tmp_path)
    assert registry.get("later") is None

    write_good(tmp_path, "later")

    assert registry.get("later") is not None
    assert sorted(registry.types) == ["first", "later"]
    parse_flow(one_task("later"), registry)


def test_a_module_fixed_after_the_first_scan_is_picked_up(tmp_path) -> None:
    source, _ = BROKEN["syntax"]
    path = write(tmp_path, "syntax", source)
    registry = TaskRegistry(tmp_path)
    assert "syntax" in registry.errors

    write_good(tmp_path, "syntax")
    # Make sure the change is seen even on a file system with coarse timestamps.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))

    assert registry.errors == {}
    assert registry.get("syntax") is not None


def test_a_module_removed_after_the_first_scan_is_forgotten(tmp_path) -> None:
    write_good(tmp_path, "keep")
    gone = write_good(tmp_path, "gone")
    registry = TaskRegistry(tmp_path)
    assert registry.get("gone") is not None

    gone.unlink()

    assert registry.get("gone") is None
    assert "unknown task type 'gone'" in registry.problem("gone")


def test_two_plugin_folders_do_not_overwrite_each_other(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    write(one, "same", GOOD.format(cls="SameTask", task_type="one"))
    write(two, "same", GOOD.format(cls="SameTask", task_type="two"))
    first, second = TaskRegistry(one), TaskRegistry(two)
    assert first.get("same").cls is not second.get("same").cls
    assert first.get("same").module_path.endswith(str(Path("one") / "task_same.py"))
    assert second.get("same").module_path.endswith(str(Path("two") / "task_same.py"))


# --- The project's own task types ------------------------------------------------------------
BUILTIN_DIR = Path(settings.FLOW_TASKS_DIR)
BUILTIN_TYPES = sorted(path.stem[len("task_") :] for path in BUILTIN_DIR.glob("task_*.py"))


def test_the_project_registers_every_task_module_it_ships() -> None:
    registry = default_registry()
    assert registry.errors == {}
    assert sorted(registry.types) == BUILTIN_TYPES
    assert {"fetch_data", "process_data", "store_data", "http_request", "noop"} <= set(
        BUILTIN_TYPES
    )


@pytest.mark.parametrize("task_type", BUILTIN_TYPES)
def test_each_builtin_task_type_is_described(task_type: str) -> None:
    info = default_registry().get(task_type)
    assert info is not None, default_registry().problem(task_type)
    assert info.cls.__name__ == class_name_for(task_type)

    assert info.description.strip()
    schema = info.parameters_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("type") == "object"
    # Every documented default is itself a valid value.
    validator = jsonschema.Draft202012Validator(schema)
    for key, prop in schema.get("properties", {}).items():
        if "default" in prop:
            errors = list(
                validator.iter_errors({**_required_example(schema), key: prop["default"]})
            )
            assert errors == [], (key, errors)

    described = info.describe()
    assert described["name"] == task_type
    assert described["description"] == info.description
    assert described["parameters_schema"] == schema
    assert described["default_timeout"] is None or described["default_timeout"] > 0


def _required_example(schema: dict[str, Any]) -> dict[str, Any]:
    """The smallest parameters a schema accepts (only http_request requires one)."""
    return {"url": "https://example.com"} if "url" in schema.get("required", []) else {}
