"""Cron schedules: each run is an ordinary execution marked as scheduled."""

import pytest
from django_q.models import Schedule

from flows import jobs, services
from flows.models import Execution, ExecutionStatus, ExecutionTrigger, FlowSchedule
from tests.factories import flow_doc, run_to_end, task

pytestmark = pytest.mark.django_db


@pytest.fixture
def flow_id():
    return services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id


def test_a_schedule_creates_a_django_q_cron_schedule_for_the_flow(flow_id):
    schedule = services.flow_schedule_set(flow_id=flow_id, cron="*/5 * * * *", input={"n": 1})
    q = schedule.q_schedule
    assert q.schedule_type == Schedule.CRON
    assert q.cron == "*/5 * * * *"
    assert q.func == "flows.jobs.run_scheduled"
    assert q.repeats == -1
    assert q.next_run is not None


def test_each_scheduled_run_is_an_execution_marked_as_scheduled(flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *", input={"n": 1})
    jobs.run_scheduled(flow_id)
    execution = Execution.objects.get()
    assert execution.trigger == ExecutionTrigger.SCHEDULE
    assert execution.input == {"n": 1}
    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED


def test_a_paused_schedule_never_fires_and_starts_nothing(flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *")
    schedule = services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *", enabled=False)
    assert schedule.q_schedule.repeats == 0
    jobs.run_scheduled(flow_id)
    assert not Execution.objects.exists()


def test_changing_a_schedule_keeps_one_django_q_schedule(flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *")
    services.flow_schedule_set(flow_id=flow_id, cron="30 2 * * *")
    assert Schedule.objects.filter(name=f"flow:{flow_id}").count() == 1
    assert FlowSchedule.objects.get().cron == "30 2 * * *"


@pytest.mark.parametrize("cron", ["not cron", "61 * * * *", "", 5])
def test_a_bad_cron_expression_is_refused_with_its_field(flow_id, cron):
    with pytest.raises(services.ServiceError) as caught:
        services.flow_schedule_set(flow_id=flow_id, cron=cron)
    assert caught.value.errors[0]["field"] == "cron"
    assert not FlowSchedule.objects.exists()


def test_deleting_a_schedule_removes_its_django_q_schedule(flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *")
    services.flow_schedule_delete(flow_id=flow_id)
    assert not FlowSchedule.objects.exists()
    assert not Schedule.objects.filter(name=f"flow:{flow_id}").exists()


def test_deleting_the_flow_removes_its_schedule(flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *")
    services.flow_delete(flow_id=flow_id)
    assert not Schedule.objects.filter(name=f"flow:{flow_id}").exists()


def test_a_schedule_for_an_unknown_flow_is_not_found():
    with pytest.raises(services.NotFound):
        services.flow_schedule_set(flow_id="missing", cron="0 * * * *")
