"""The django-q2 entry points: the function paths that queued jobs and schedules store."""

from __future__ import annotations

import pytest
from django.utils.module_loading import import_string
from django_q.models import Schedule

from flows import engine, jobs, services


@pytest.mark.parametrize(
    "path", [engine.JOB_FUNC, "flows.jobs.reap", services.SCHEDULE_FUNC, services.PURGE_JOB]
)
def test_every_function_path_stored_in_the_queue_names_a_job(path: str) -> None:
    # Jobs already queued, and schedules in existing databases, name these paths.
    assert import_string(path).__module__ == "flows.jobs"


def test_the_job_that_runs_steps_keeps_its_stored_name() -> None:
    assert engine.JOB_FUNC == "flows.jobs.run_execution"
    assert import_string(engine.JOB_FUNC) is jobs.run_execution


def test_the_engine_entry_point_is_not_named_like_the_job() -> None:
    # One name, one loop: the job is flows.jobs.run_execution, the engine's entry dispatch.
    assert not hasattr(engine, "run_execution")
    assert callable(engine.dispatch)


@pytest.mark.django_db
def test_the_reaper_schedule_made_by_the_migration_names_a_job() -> None:
    schedule = Schedule.objects.get(func="flows.jobs.reap")
    assert import_string(schedule.func) is jobs.reap
