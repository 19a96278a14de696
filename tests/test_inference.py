import json
import uuid

import numpy as np
import pytest

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.inference import iter_run_agent, run_agent
from sam_veteran.plugin.model import SamVeteranModel


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 12)
    yield ds
    ds.delete()


def scripted_model(segmenter, answers=box_then_click):
    policy = scripted_policy(answers)
    return policy, SamVeteranModel(agent=Agent(policy, segmenter, AgentConfig(max_steps=3)))


def queries_run(policy) -> set[str]:
    return {query for query, step, _ in policy.calls if step == 0}


def test_runner_writes_the_same_labels_as_apply_model(dataset, tiny_segmenter):
    _, model = scripted_model(tiny_segmenter)
    summary = run_agent(dataset, model, label_field="run", batch_size=5)
    assert summary | {"seconds": 0} == {"total": 12, "skipped": 0, "to_run": 12, "done": 12, "failed": 0,
                                        "seconds": 0}
    dataset.apply_model(scripted_model(tiny_segmenter)[1], label_field="applied", prompt_field="query",
                        batch_size=6)
    for sample in dataset:
        assert np.array_equal(sample["run_mask"].mask, sample["applied_mask"].mask)
        assert sample["run_mask"].num_steps == sample["applied_mask"].num_steps == 2
        for ours, theirs in zip(sample["run_steps"].detections, sample["applied_steps"].detections):
            assert ours.bounding_box == theirs.bounding_box and np.array_equal(ours.mask, theirs.mask)
            assert (ours.step, ours.action) == (theirs.step, theirs.action)
            assert ours.confidence == pytest.approx(theirs.confidence, abs=1e-5)  # batches differ: float noise
        assert [k.points for k in sample["run_clicks"].keypoints] == \
               [k.points for k in sample["applied_clicks"].keypoints]
    schema = dataset.get_field_schema()
    assert {f: type(schema[f"run_{f}"]) for f in ("mask", "steps", "clicks")} == \
           {f: type(schema[f"applied_{f}"]) for f in ("mask", "steps", "clicks")}


def test_each_batch_is_written_as_soon_as_it_finishes(dataset, tiny_segmenter):
    _, model = scripted_model(tiny_segmenter)
    run = iter_run_agent(dataset, model, batch_size=4)
    first = next(run)
    assert (first.done, first.to_run) == (4, 12) and first.fraction == pytest.approx(1 / 3)
    assert dataset.exists("veteran_mask").count() == 4  # in the database before the run goes on
    assert [p.done for p in run] == [8, 12]


def test_an_interrupted_run_keeps_its_batches_and_a_rerun_does_only_the_rest(dataset, tiny_segmenter):
    def interrupted(query, step, sampled):
        if query == "object 6":  # the first sample of the third batch of three
            raise KeyboardInterrupt
        return box_then_click(query, step, sampled)

    _, model = scripted_model(tiny_segmenter, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_agent(dataset, model, batch_size=3)
    done = set(dataset.exists("veteran_mask").values("query"))
    assert done == {f"object {i}" for i in range(6)}

    policy, model = scripted_model(tiny_segmenter)
    summary = run_agent(dataset, model, batch_size=3)
    assert (summary["skipped"], summary["to_run"], summary["done"], summary["failed"]) == (6, 6, 6, 0)
    assert queries_run(policy) == {f"object {i}" for i in range(6, 12)}
    assert dataset.exists("veteran_mask").count() == 12


def test_failures_are_recorded_and_retried_while_the_rest_are_skipped(dataset, tiny_segmenter, tmp_path):
    broken = tmp_path / "truncated.png"
    broken.write_bytes(open(dataset.first().filepath, "rb").read()[:60])
    ids = dataset.values("id")
    dataset.set_values("filepath", {ids[4]: str(broken)}, key_field="id")
    dataset.set_values("query", {ids[7]: None}, key_field="id")
    _, model = scripted_model(tiny_segmenter)
    summary = run_agent(dataset, model, batch_size=4)
    assert (summary["done"], summary["failed"]) == (12, 2)
    masks = dict(zip(ids, dataset.values("veteran_mask")))
    assert "truncated.png" in masks[ids[4]].error and masks[ids[4]].end_reason == "invalid_input"
    assert "query in field 'query' is missing" in masks[ids[7]].error
    assert all(masks[i].end_reason == "agent_stopped" for i in ids if i not in (ids[4], ids[7]))

    dataset.set_values("query", {ids[7]: "object 7"}, key_field="id")
    policy, model = scripted_model(tiny_segmenter)
    summary = run_agent(dataset, model, batch_size=4)
    assert (summary["skipped"], summary["to_run"], summary["failed"]) == (10, 2, 1)
    assert queries_run(policy) == {"object 7"}
    assert dataset[ids[7]]["veteran_mask"].end_reason == "agent_stopped"


def test_overwrite_runs_everything_again(dataset, tiny_segmenter):
    _, model = scripted_model(tiny_segmenter)
    run_agent(dataset.limit(4), model)
    policy, model = scripted_model(tiny_segmenter)
    assert run_agent(dataset.limit(4), model)["skipped"] == 4 and not policy.calls
    summary = run_agent(dataset.limit(4), model, overwrite=True)
    assert (summary["skipped"], summary["done"]) == (0, 4)


def test_nothing_to_do_loads_no_model_and_a_missing_query_field_is_named(dataset, tiny_segmenter):
    _, model = scripted_model(tiny_segmenter)
    run_agent(dataset.limit(2), model)
    summary = run_agent(dataset.limit(2), policy="/nonexistent/policy", segmenter="/nonexistent/sam.pth")
    assert (summary["skipped"], summary["done"]) == (2, 0)
    with pytest.raises(ValueError, match="no query field 'question'"):
        run_agent(dataset, model, prompt_field="question")


def test_runner_loads_real_tiny_models_from_paths(dataset, tiny_models):
    summary = run_agent(dataset.limit(2), policy=str(tiny_models["policy-qwen3_vl"]),
                        segmenter=str(tiny_models["segmenter"]), max_steps=1, device="cpu", max_new_tokens=16,
                        label_field="tiny")
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert dataset.exists("tiny_mask").count() == 2


def test_run_command_runs_on_a_view_and_resumes(tmp_path, capsys):
    from sam_veteran.cli import main

    name = f"cli-run-{uuid.uuid4().hex[:8]}"  # the database may be shared with other test sessions
    dataset = make_dataset(tmp_path, 5, name=name)
    dataset.take(3, seed=0).tag_samples("pick")
    try:
        assert main(["run", name, "--tiny", "--tags", "pick", "--max-steps", "1", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (summary["total"], summary["done"]) == (3, 3)
        assert set(dataset.exists("veteran_mask").values("id")) == set(dataset.match_tags("pick").values("id"))
        assert main(["run", name, "--tiny", "--max-steps", "1"]) == 0
        out = capsys.readouterr().out
        assert "ran the agent on 2 samples" in out and "3 already had results" in out
        assert dataset.exists("veteran_mask").count() == 5
        reasons = dataset.count_values("veteran_mask.end_reason")
        assert "why the traces of the view ended: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) in out
        assert main(["run", name, "--tiny"]) == 0
        assert "nothing to run: all 5 samples of the view already have results in 'veteran'" in capsys.readouterr().out
    finally:
        dataset.delete()


@pytest.mark.parametrize("every, declarations", [(1e9, 2), (0.0, 1 + 6)])
def test_fields_are_redeclared_after_the_last_batch_and_at_most_every_few_seconds(dataset, tiny_segmenter,
                                                                                  monkeypatch, every, declarations):
    import sam_veteran.plugin.inference as inference

    calls = []
    declare = inference._declare_fields  # reloads the dataset: tens of milliseconds each
    monkeypatch.setattr(inference, "_declare_fields", lambda *args: calls.append(1) or declare(*args))
    monkeypatch.setattr(inference, "REDECLARE_SECONDS", every)
    run_agent(dataset, scripted_model(tiny_segmenter)[1], batch_size=2)
    assert len(calls) == declarations  # before the first batch, then after the last (or after each)
    assert dataset.exists("veteran_mask").count() == 12
    assert {"veteran_mask", "veteran_steps", "veteran_clicks"} <= set(dataset.get_field_schema())
