"""Starting, re-running and idempotent submits through the services every face uses."""

import pytest

from flows import services
from flows.models import Execution, ExecutionStatus, ExecutionTrigger, Flow
from tests.factories import flow_doc, run_to_end, task

pytestmark = pytest.mark.django_db


@pytest.fixture
def version():
    return services.flow_create(document=flow_doc([task("a"), task("b")]))


def test_submit_creates_and_queues_an_execution_with_its_input(version, alice):
    execution, created = services.execution_submit(
        flow_version=version, user=alice, input={"customer": 7}
    )
    assert created
    assert execution.status == ExecutionStatus.QUEUED
    assert execution.input == {"customer": 7}
    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED


def test_the_same_idempotency_key_returns_the_first_execution(version, alice):
    first, created = services.execution_submit(
        flow_version=version, user=alice, idempotency_key="k1"
    )
    again, created_again = services.execution_submit(
        flow_version=version, user=alice, idempotency_key="k1"
    )
    assert created and not created_again
    assert again.id == first.id
    assert Execution.objects.count() == 1


def test_a_key_repeated_with_another_request_fingerprint_is_refused(version, alice):
    one, two = services.body_fingerprint({"input": {"n": 1}}), services.body_fingerprint({})
    services.execution_submit(
        flow_version=version, user=alice, idempotency_key="k1", request_fingerprint=one
    )

    with pytest.raises(services.IdempotencyConflict, match="different request body"):
        services.execution_submit(
            flow_version=version, user=alice, idempotency_key="k1", request_fingerprint=two
        )
    assert Execution.objects.count() == 1


def test_a_repeat_without_a_fingerprint_matches_any_earlier_request(version, alice):
    first, _ = services.execution_submit(
        flow_version=version,
        user=alice,
        idempotency_key="k1",
        request_fingerprint=services.body_fingerprint({"input": {"n": 1}}),
    )

    again, created = services.execution_submit(
        flow_version=version, user=alice, idempotency_key="k1"
    )

    assert (again.id, created) == (first.id, False)


def test_body_fingerprints_ignore_key_order_but_not_value_types():
    fingerprint = services.body_fingerprint

    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": True})
    assert fingerprint({"a": [1, 2]}) != fingerprint({"a": [2, 1]})


def test_idempotency_keys_belong_to_their_user(version, alice, bob):
    mine, _ = services.execution_submit(flow_version=version, user=alice, idempotency_key="k1")
    theirs, created = services.execution_submit(
        flow_version=version, user=bob, idempotency_key="k1"
    )
    assert created
    assert theirs.id != mine.id


def test_rerun_starts_a_new_execution_of_the_same_version_and_input(version, alice):
    original, _ = services.execution_submit(flow_version=version, user=alice, input={"x": 1})
    run_to_end(original.id)
    rerun = services.execution_rerun(execution_id=original.id, user=alice)
    assert rerun.id != original.id
    assert rerun.flow_version_id == original.flow_version_id
    assert rerun.input == {"x": 1}
    assert rerun.trigger == ExecutionTrigger.RERUN
    assert rerun.rerun_of_id == original.id
    assert run_to_end(rerun.id).status == ExecutionStatus.COMPLETED


def test_a_flow_with_a_queued_execution_cannot_be_deleted(version, alice):
    services.execution_submit(flow_version=version, user=alice)
    with pytest.raises(services.Conflict, match="cancel them first"):
        services.flow_delete(flow_id=version.flow_id)
    assert Flow.objects.filter(pk=version.flow_id).exists()


def test_a_flow_whose_executions_ended_is_deleted_with_them(version, alice):
    execution, _ = services.execution_submit(flow_version=version, user=alice)
    run_to_end(execution.id)
    services.flow_delete(flow_id=version.flow_id)
    assert not Flow.objects.exists()
    assert not Execution.objects.exists()


def test_deleting_an_unknown_flow_is_not_found():
    with pytest.raises(services.NotFound):
        services.flow_delete(flow_id="nope")
