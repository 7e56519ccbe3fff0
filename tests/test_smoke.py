from tests.factories import sample_flow


def test_seed_sample_flow_runs_to_completed_through_the_endpoints(api, sync_jobs):
    created = api.post("/flow/create", sample_flow(), format="json")
    assert created.status_code == 200, created.json()
    execution_id = created.json()["execution_id"]
    with sync_jobs():
        started = api.post("/flow/execute", {"execution_id": execution_id}, format="json")
    assert started.status_code == 200, started.json()
    status = api.get(f"/flow/{execution_id}/status").json()
    assert status["status"] == "COMPLETED"
    assert status["completed_tasks"] == ["task1", "task2", "task3"]
    assert status["task_results"]["task3"]["status"] == "SUCCESS"
