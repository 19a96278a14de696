"""Seg-Zero and VisionReasoner checkpoints in the harness: their prompts, their answers, their clicks, no refinement.

The reference behaviour is ported from the peers' evaluation scripts (dvlab-research/Seg-Zero
``evaluation_scripts/evaluation.py``, dvlab-research/VisionReasoner ``vision_reasoner/models/
vision_reasoner_model.py``): the prompt each sends, and how each extracts box and points from the answer. Scripted
policies answer in each peer's format and go through the real parser, loop, segmenter and FiftyOne writes.
"""

import json
import re
import uuid

import fiftyone.operators as foo
import numpy as np
import pytest

from agent_data import make_dataset
from sam_veteran.plugin.agent import Action, Agent, AgentConfig, AgentInput, EndReason, TransformersPolicy
from sam_veteran.plugin.agent.parsing import AnswerError, parse_grounding
from sam_veteran.plugin.agent.prompts import (FAMILIES, KNOWN_POLICIES, PEER_FAMILIES, ModelFamily, get_family,
                                              resolve_family)
from sam_veteran.plugin.evaluation import evaluate
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.model import SamVeteranModel
from sam_veteran.plugin.panels.evaluation import curve_traces

SEG_ZERO, VISION_REASONER = PEER_FAMILIES["seg_zero"], PEER_FAMILIES["vision_reasoner"]


# --- ports of the peers' prompt and extraction code -----------------------------------------------------------------

def seg_zero_prompt(text):
    template = ("Please find '{Question}' with bbox and points."
                "Compare the difference between objects and find the most closely matched one."
                "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
                "Output the one bbox and points of two largest inscribed circles inside the interested object in "
                "JSON format."
                "i.e., <think> thinking process here </think>"
                "<answer>{Answer}</answer>")
    return template.format(Question=text.lower().strip("."),
                           Answer="{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}")


def vision_reasoner_prompt(text):
    template = ("Please find \"{Question}\" with bboxs and points."
                "Compare the difference between object(s) and find the most closely matched object(s)."
                "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
                "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
                "i.e., <think> thinking process here </think>"
                "<answer>{Answer}</answer>")
    answer = ("[{\"bbox_2d\": [10,100,200,210], \"point_2d\": [30,110]}, "
              "{\"bbox_2d\": [225,296,706,786], \"point_2d\": [302,410]}]")
    return template.format(Question=text.lower().strip(".\"?!"), Answer=answer)


def seg_zero_extract(output_text, x_factor, y_factor):
    """Seg-Zero's extract_bbox_points_think; raises where Seg-Zero's would (its caller then scores a failure)."""
    data = json.loads(re.search(r"{[^}]+}", output_text).group(0))
    bbox_key = next((key for key in data.keys() if "bbox" in key.lower()), None)
    bbox = data[bbox_key]
    assert len(bbox) == 4
    bbox = [round(int(bbox[0]) * x_factor), round(int(bbox[1]) * y_factor), round(int(bbox[2]) * x_factor),
            round(int(bbox[3]) * y_factor)]
    points_keys = [key for key in data.keys() if "points" in key.lower()][:2]
    assert len(points_keys) == 2
    points = [[round(int(data[k][0]) * x_factor), round(int(data[k][1]) * y_factor)] for k in points_keys]
    return bbox, points, [1, 1]  # SAM's point_labels in Seg-Zero's evaluation


def vision_reasoner_extract(output_text, x_factor, y_factor):
    """VisionReasoner's extract_bbox_points_think: nothing without <answer> tags or with unreadable JSON."""
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", output_text, re.DOTALL)
    if not match:
        return [], []
    try:
        data = json.loads(match.group(1))
        boxes = [[int(o["bbox_2d"][0] * x_factor + 0.5), int(o["bbox_2d"][1] * y_factor + 0.5),
                  int(o["bbox_2d"][2] * x_factor + 0.5), int(o["bbox_2d"][3] * y_factor + 0.5)] for o in data]
        points = [[int(o["point_2d"][0] * x_factor + 0.5), int(o["point_2d"][1] * y_factor + 0.5)] for o in data]
    except Exception:
        return [], []
    return boxes, points


# --- prompts and family resolution ----------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["The cup on the left.", 'What holds "the books"?', "a DOG"])
def test_prompts_are_the_peers_own(query):
    assert SEG_ZERO.grounding_prompt(query) == seg_zero_prompt(query)
    assert VISION_REASONER.grounding_prompt(query) == vision_reasoner_prompt(query)
    assert SEG_ZERO.input_size == VISION_REASONER.input_size == (840, 840)  # both resize to 840x840
    assert SEG_ZERO.system_prompt == "You are a helpful assistant."  # Qwen2.5-VL's default, which they get


def test_family_is_picked_from_the_argument_then_the_hub_id_then_the_model_type():
    assert resolve_family("seg_zero", "anything", "qwen2_5_vl") is SEG_ZERO
    custom = ModelFamily("mine")
    assert resolve_family(custom, "Ricky06662/Seg-Zero-7B", "qwen2_5_vl") is custom
    assert resolve_family(None, "Ricky06662/Seg-Zero-7B", "qwen2_5_vl") is SEG_ZERO
    assert resolve_family(None, "Ricky06662/VisionReasoner-7B", "qwen2_5_vl") is VISION_REASONER
    assert resolve_family(None, "some/folder", "qwen3_vl") is FAMILIES["qwen3_vl"]
    assert set(KNOWN_POLICIES.values()) == set(PEER_FAMILIES)
    assert SEG_ZERO.max_steps == VISION_REASONER.max_steps == 0 and FAMILIES["qwen2_5_vl"].max_steps == 3
    with pytest.raises(ValueError, match="seg_zero, vision_reasoner"):
        get_family("llava")


# --- answers ------------------------------------------------------------------------------------------------------

SEG_ZERO_ANSWERS = [
    '<think>the left cup</think><answer>{"bbox": [10, 100, 200, 210], "points_1": [30, 110], '
    '"points_2": [35, 180]}</answer>',
    '<think>no tags follow</think> {"bbox": [84, 84, 420, 630], "points_1": [100, 200], "points_2": [300, 500]}',
    '<answer>{"bbox_2d": [5, 6, 700, 800], "points_a": [7, 8], "points_b": [600, 700]}</answer>',
]


@pytest.mark.parametrize("text", SEG_ZERO_ANSWERS)
def test_seg_zero_answers_read_as_seg_zero_reads_them(text):
    answer = parse_grounding(text, "seg_zero")
    width, height = 1600, 900
    box, points, labels = seg_zero_extract(text, width / 840, height / 840)
    assert SEG_ZERO.box_to_image(answer.box, (width, height)) == pytest.approx(box, abs=1)
    assert [SEG_ZERO.to_image(p, (width, height)) for p in answer.points] == [pytest.approx(p, abs=1)
                                                                              for p in points]
    assert labels == [1, 1] and answer.positive is None and answer.negative is None  # both positive, with the box
    assert any("no <answer> tags" in n for n in answer.notes) == ("<answer>" not in text)


def test_seg_zero_answers_it_cannot_read():
    with pytest.raises(AnswerError, match="two points"):
        parse_grounding('<answer>{"bbox": [1, 2, 30, 40], "points_1": [5, 6]}</answer>', "seg_zero")
    with pytest.raises(AnswerError, match="no JSON object"):
        parse_grounding("I cannot see it", "seg_zero")
    with pytest.raises(AssertionError):  # Seg-Zero fails on it too
        seg_zero_extract('<answer>{"bbox": [1, 2, 30, 40], "points_1": [5, 6]}</answer>', 1, 1)


VISION_REASONER_ANSWERS = [
    '<think>two of them</think><answer>[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, '
    '{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]</answer>',  # the prompt's own example
    '<think>one</think><answer>[{"bbox_2d": [84, 84, 420, 630], "point_2d": [250, 300]}]</answer>',
]


@pytest.mark.parametrize("text", VISION_REASONER_ANSWERS)
def test_vision_reasoner_answers_read_as_vision_reasoner_reads_them(text):
    answer = parse_grounding(text, "vision_reasoner")
    width, height = 640, 480
    boxes, points = vision_reasoner_extract(text, width / 840, height / 840)
    enclosing = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                 max(b[3] for b in boxes)]
    assert VISION_REASONER.box_to_image(answer.box, (width, height)) == pytest.approx(enclosing, abs=1)
    assert [VISION_REASONER.to_image(p, (width, height)) for p in answer.points] == [pytest.approx(p, abs=1)
                                                                                     for p in points]
    assert any("2 objects" in n for n in answer.notes) == (len(boxes) == 2)


def test_vision_reasoner_empty_list_finds_nothing_and_tags_are_required():
    nothing = parse_grounding("<think>no such thing</think><answer>[]</answer>", "vision_reasoner")
    assert nothing.box is None and nothing.points == [] and vision_reasoner_extract(
        "<answer>[]</answer>", 1, 1) == ([], [])
    untagged = '[{"bbox_2d": [1, 2, 30, 40], "point_2d": [5, 6]}]'
    assert vision_reasoner_extract(untagged, 1, 1) == ([], [])  # VisionReasoner reads nothing without tags
    with pytest.raises(AnswerError, match="no <answer>"):
        parse_grounding(untagged, "vision_reasoner")
    with pytest.raises(AnswerError, match="point_2d"):
        parse_grounding('<answer>[{"bbox_2d": [1, 2, 30, 40]}]</answer>', "vision_reasoner")


# --- the loop, with scripted policies in each peer's format ----------------------------------------------------------

class PeerPolicy:
    """Answers every request with `answer(prompt)`; records the prompts."""

    def __init__(self, family, answer):
        self.family, self.answer, self.prompts = family, answer, []

    def generate(self, requests, sample=False):
        self.prompts += [r.prompt for r in requests]
        return [self.answer(r.prompt) for r in requests]


def _image(height=300, width=400):
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_seg_zero_box_and_two_positive_clicks_are_step_zero_and_nothing_follows(tiny_segmenter):
    policy = PeerPolicy(SEG_ZERO, lambda prompt: SEG_ZERO_ANSWERS[0])
    (trace,) = Agent(policy, tiny_segmenter).run([AgentInput(_image(), "The cup.")])
    assert policy.prompts == [seg_zero_prompt("The cup.")]  # one call: no refinement by default
    (step,) = trace.steps
    assert step.action is Action.BOX and trace.end_reason is EndReason.STEP_CAP and step.mask is not None
    assert step.box == pytest.approx((10 * 400 / 840, 100 * 300 / 840, 200 * 400 / 840, 210 * 300 / 840))
    assert trace.clicks == [(0, pytest.approx((30 * 400 / 840, 110 * 300 / 840)), True),
                            (0, pytest.approx((35 * 400 / 840, 180 * 300 / 840)), True)]


def test_peers_refine_only_when_asked(tiny_segmenter):
    def answer(prompt):
        return SEG_ZERO_ANSWERS[1] if "Please find" in prompt else \
            '<answer>{"positive_point": null, "negative_point": null}</answer>'

    policy = PeerPolicy(SEG_ZERO, answer)
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=2)).run([AgentInput(_image(), "a cup")])
    assert len(policy.prompts) == 2 and [s.action for s in trace.steps] == [Action.BOX, Action.STOP]
    assert any("no <answer> tags" in n for n in trace.steps[0].notes)


def test_vision_reasoner_objects_and_nothing_found(tiny_segmenter):
    answers = {"two cups": VISION_REASONER_ANSWERS[0], "a unicorn": "<think>none</think><answer>[]</answer>"}
    policy = PeerPolicy(VISION_REASONER, lambda prompt: answers[prompt.split('"')[1]])
    two, none = Agent(policy, tiny_segmenter).run([AgentInput(_image(), "two cups"),
                                                   AgentInput(_image(), "a unicorn")])
    assert len(policy.prompts) == 2
    assert two.box == pytest.approx((10 * 400 / 840, 100 * 300 / 840, 706 * 400 / 840, 786 * 300 / 840))
    assert [c[2] for c in two.clicks] == [True, True] and two.num_steps == 1
    assert none.end_reason is EndReason.AGENT_STOPPED and none.num_steps == 0 and not none.mask.any()
    assert none.steps[0].action is Action.STOP and none.steps[0].reasoning == "none"


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 6, name=f"peers-{uuid.uuid4().hex[:8]}")
    yield ds
    ds.delete()


def test_peers_run_through_apply_model_and_run_agent_and_are_evaluated(dataset, tiny_segmenter):
    seg_zero = SamVeteranModel(agent=Agent(PeerPolicy(SEG_ZERO, lambda p: SEG_ZERO_ANSWERS[0]), tiny_segmenter))
    dataset.apply_model(seg_zero, label_field="seg_zero", prompt_field="query", batch_size=3)
    vr_policy = PeerPolicy(VISION_REASONER, lambda p: VISION_REASONER_ANSWERS[1])
    summary = run_agent(dataset, SamVeteranModel(agent=Agent(vr_policy, tiny_segmenter)),
                        label_field="vision_reasoner", batch_size=4)
    assert summary["done"] == 6 and summary["failed"] == 0 and len(vr_policy.prompts) == 6
    sample = dataset.first()
    assert [k.label for k in sample.seg_zero_clicks.keypoints] == ["positive", "positive"]
    assert {k.step for k in sample.seg_zero_clicks.keypoints} == {0}
    assert sample.seg_zero_mask.num_steps == 1 and len(sample.vision_reasoner_clicks.keypoints) == 1
    dataset.set_values("ground_truth", [label for label in dataset.values("seg_zero_mask")])
    for field in ("seg_zero", "vision_reasoner"):
        results = evaluate(dataset, f"{field}_mask", "ground_truth", eval_key=f"eval_{field}", protocol=field)
        assert results.metrics()["count"] >= 1
    assert {"eval_seg_zero", "eval_vision_reasoner"} <= set(dataset.list_evaluations())
    loaded = dataset.load_evaluation_results("eval_seg_zero")
    assert loaded.metrics()["gIoU"] == 1.0 and np.isnan(loaded.metrics()["cIoU"])  # scored against itself
    traces = curve_traces({"eval_seg_zero": loaded, "eval_vision_reasoner": results})
    assert [t["name"] for t in traces] == ["eval_seg_zero gIoU", "eval_vision_reasoner gIoU",
                                           "eval_vision_reasoner cIoU"]  # no cIoU line where there is none
    json.dumps(traces, allow_nan=False)


def test_evaluate_operator_returns_no_cIoU_for_seg_zero(dataset, tiny_segmenter, installed_plugin):
    seg_zero = SamVeteranModel(agent=Agent(PeerPolicy(SEG_ZERO, lambda p: SEG_ZERO_ANSWERS[0]), tiny_segmenter))
    dataset.apply_model(seg_zero, label_field="seg_zero", prompt_field="query")
    dataset.set_values("ground_truth", dataset.values("seg_zero_mask"))
    result = foo.get_operator("@sam-veteran/fiftyone/evaluate")(dataset, "seg_zero", eval_key="op",
                                                                 protocol="seg_zero")
    assert result.error is None, result.error
    assert result.result["gIoU"] == 1.0 and "cIoU" not in result.result
    json.dumps(result.result, allow_nan=False)  # what the App receives is valid JSON


def test_family_reaches_the_loaded_policy_and_sets_the_default_steps(tiny_models, tiny_segmenter):
    path = str(tiny_models["policy-qwen2_5_vl"])
    assert TransformersPolicy.from_pretrained(path, device="cpu", family="seg_zero").family is SEG_ZERO
    model = SamVeteranModel(policy=path, segmenter=str(tiny_models["segmenter"]), device="cpu",
                            family="vision_reasoner")
    assert model.agent.family is VISION_REASONER and model.agent.max_steps == 0
    stepped = SamVeteranModel(policy=path, segmenter=str(tiny_models["segmenter"]), device="cpu",
                              family=VISION_REASONER, max_steps=2)
    assert stepped.agent.max_steps == 2
    assert SamVeteranModel(policy=path, segmenter=str(tiny_models["segmenter"]), device="cpu").agent.max_steps == 3


def test_cli_and_operator_offer_the_family(dataset, installed_plugin, capsys):
    from fiftyone.operators.executor import ExecutionContext, Executor

    from sam_veteran.cli import main
    from sam_veteran.plugin.operators.run_agent import RunSamVeteran

    context = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}}, executor=Executor())
    form = RunSamVeteran().resolve_input(context).type
    assert form.properties["family"].type.values == ["auto", *FAMILIES, *PEER_FAMILIES]
    assert form.properties["max_steps"].default is None
    with pytest.raises(SystemExit) as exit_:
        main(["run", dataset.name, "--tiny", "--family", "llava"])
    assert exit_.value.code == 2 and "'seg_zero', 'vision_reasoner'" in capsys.readouterr().err
