"""The Train operator: registered in the plugin, delegated only, queues a run on the view that a worker executes."""

import uuid
from pathlib import Path

import fiftyone.operators as foo
import pytest
import yaml
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext

from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.plugin.operators.train import TrainSamVeteran, training_config
from sam_veteran.trainer.train import load_view

URI = "@sam-veteran/fiftyone/train"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def scenes(tmp_path):
    # a unique name: concurrent test sessions on one machine share FiftyOne's database service
    dataset = build_demo_dataset(tmp_path / "scenes", num_samples=4, name=f"train-operator-{uuid.uuid4().hex}")
    yield dataset
    dataset.delete()


def test_the_train_operator_is_registered_and_delegated_only(installed_plugin, scenes):
    assert foo.get_operator(URI) is not None
    ctx = ExecutionContext(request_params={"dataset_name": scenes.name, "params": {}})
    options = TrainSamVeteran().resolve_execution_options(ctx)
    assert not options.allow_immediate_execution and options.allow_delegated_execution
    form = TrainSamVeteran().resolve_input(ctx).type
    assert "query" in form.properties["prompt_field"].type.values


def test_config_records_the_view(scenes):
    view = scenes.limit(3)
    config = training_config(view, {"config": str(REPO / "trainer/configs/one_gpu_lora.yaml"), "max_steps": 5,
                                    "output_dir": "/tmp/x", "query_field": "query"})
    assert config.lora.enabled and config.max_steps == 5 and config.output_dir == "/tmp/x"
    assert config.data.dataset == scenes.name and config.data.view == view._serialize()
    assert load_view(config).values("id") == view.values("id")  # the stored view rebuilds the same samples


def test_a_queued_run_trains_on_the_view(installed_plugin, scenes, tmp_path):
    view = scenes.limit(2)
    queued = foo.get_operator(URI)(view, output_dir=str(tmp_path / "run"), max_steps=1, tiny=True)
    assert queued.error is None
    service = DelegatedOperationService()
    service.execute_queued_operations(operator=URI, dataset_name=scenes.name)
    done = service.get(queued.result["id"])
    assert done.run_state == "completed", (done.run_state, done.result)
    assert done.result.result["global_step"] == 1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["dataset"] == scenes.name
    assert [(s["_cls"], s["kwargs"]) for s in saved["data"]["view"]] == [("fiftyone.core.stages.Limit", [["limit", 2]])]
    assert (tmp_path / "run" / "final" / "config.json").exists()
