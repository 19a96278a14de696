"""SAM-Veteran: Run agent, as the App runs it: registered through FiftyOne's plugin machinery, immediate and delegated."""

import uuid

import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, Executor

from agent_data import make_dataset
from sam_veteran.plugin.operators.run_agent import RunSamVeteran

URI = "@sam-veteran/fiftyone/run_sam_veteran"


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 10, name=f"run-operator-{uuid.uuid4().hex[:8]}")  # the database may be shared
    yield ds
    ds.delete()


@pytest.fixture
def tiny(tiny_models):
    return {"policy": str(tiny_models["policy-qwen2_5_vl"]), "segmenter": str(tiny_models["segmenter"]),
            "max_steps": 1, "max_new_tokens": 16, "batch_size": 4}


def context(dataset, params=None, **request):
    return ExecutionContext(request_params={"dataset_name": dataset.name, "params": params or {}, **request},
                            executor=Executor())


def test_listed_among_the_plugin_operators(installed_plugin):
    listed = {op.uri: op for op in foo.list_operators(type="operator")}  # what `fiftyone operators list` prints
    assert URI in listed and listed[URI].config.label == "SAM-Veteran: Run agent"


def test_form_offers_text_fields_and_says_what_a_rerun_skips(installed_plugin, dataset, tiny):
    form = RunSamVeteran().resolve_input(context(dataset)).type
    assert form.properties["prompt_field"].type.values == ["query"]
    assert {"view_target", "label_field", "policy", "segmenter", "max_steps", "batch_size", "overwrite"} <= \
           set(form.properties)
    assert "resume" not in form.properties
    foo.get_operator(URI)(dataset.limit(4), **tiny)
    notice = RunSamVeteran().resolve_input(context(dataset)).type.properties["resume"]
    assert notice.view.label.startswith("4 of 10 samples already have results in 'veteran'")


def test_delegation_is_the_default_past_a_handful_of_samples(dataset):
    many = RunSamVeteran().resolve_execution_options(context(dataset))
    assert many.allow_immediate_execution and many.allow_delegated_execution and many.default_choice_to_delegated
    ids = dataset.values("id")[:3]
    few = RunSamVeteran().resolve_execution_options(
        context(dataset, {"view_target": "SELECTED_SAMPLES"}, selected=ids))
    assert few.allow_delegated_execution and not few.default_choice_to_delegated


def test_immediate_run_streams_progress_then_reloads(dataset, tiny):
    ids = dataset.values("id")
    ctx = context(dataset, {"view_target": "SELECTED_SAMPLES", **tiny}, selected=ids[2:7])
    messages = list(RunSamVeteran().execute(ctx))
    progress = [m.body.params for m in messages[:-1]]
    assert [m.body.operator_uri for m in messages] == ["set_progress"] * 2 + ["reload_dataset"]
    assert [p["progress"] for p in progress] == pytest.approx([0.8, 1.0])
    assert progress[-1]["label"].startswith("5/5 samples written")
    assert set(dataset.exists("veteran_mask").values("id")) == set(ids[2:7])


def test_immediate_run_from_python_through_the_plugin(installed_plugin, dataset, tiny):
    result = foo.get_operator(URI)(dataset.limit(3), label_field="agent", **tiny)
    assert result.error is None, result.error
    assert dataset.exists("agent_mask").count() == 3
    assert all(m.mask.shape == (m_h, m_w) for m, (m_w, m_h) in zip(
        dataset.limit(3).values("agent_mask"), [(200, 100), (120, 160), (90, 90)]))


def test_delegated_run_is_queued_then_executed(installed_plugin, dataset, tiny):
    queued = foo.get_operator(URI)(dataset, delegate=True, **tiny)
    assert queued.error is None, queued.error
    service = DelegatedOperationService()
    assert service.get(queued.result["id"]).run_state == "queued"
    assert dataset.exists("veteran_mask").count() == 0  # nothing ran yet
    service.execute_queued_operations(operator=URI, dataset_name=dataset.name)
    done = service.get(queued.result["id"])
    assert done.run_state == "completed", (done.run_state, done.result)
    assert done.result.result | {"seconds": 0} == {"total": 10, "skipped": 0, "to_run": 10, "done": 10, "failed": 0,
                                                   "seconds": 0}
    assert done.status.progress == 1.0 and done.status.label.startswith("10/10 samples written")
    assert dataset.exists("veteran_mask").count() == 10
