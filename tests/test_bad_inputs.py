"""The bad-input corpus, end to end: import (ReasonSeg) -> agent (`run_agent`) -> labels -> evaluation.

Every file is generated here into a temporary folder. Each bad item gets a clear error on its own sample (or a
documented repair), the rest of the batch runs, and what was written stays written.
"""

import json
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from agent_data import box_then_click, make_dataset
from sam_veteran import evaluate, import_reasonseg
from sam_veteran.plugin.agent import FAMILIES, Agent, AgentConfig
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.model import SamVeteranModel
from scripted import ScriptedPolicy, box_answer, click_answer

LONG_QUERY = "the " + "very " * 1998 + "red cup"  # 10,000 characters
OTHER_SCRIPTS = ["红色的杯子", "الكوب الأحمر", "the cup 🍵☕️"]


def _pixels(height, width):
    return np.random.default_rng(height * width).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _rotated(path):  # stored 80 wide, 40 tall; EXIF says rotate 90 degrees clockwise: shown 40 wide, 80 tall
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_pixels(40, 80)).save(path, exif=exif, quality=95)


IMAGES = {  # name -> writer; every one a valid image of the size its shapes expect (60x40 unless said)
    "gray.png": lambda p: Image.fromarray(_pixels(40, 60)[..., 0]).save(p),
    "rgba.png": lambda p: Image.fromarray(np.dstack([_pixels(40, 60), np.full((40, 60), 9, np.uint8)])).save(p),
    "sixteen.png": lambda p: Image.fromarray(_pixels(40, 60)[..., 0].astype(np.uint16) * 257).save(p),
    "cmyk.jpg": lambda p: Image.fromarray(_pixels(40, 60)).convert("CMYK").save(p),
    "palette.png": lambda p: Image.fromarray(_pixels(40, 60)).convert("P").save(p),
    "one.png": lambda p: Image.fromarray(_pixels(1, 1)).save(p),
    "rotated.jpg": _rotated,
    "truncated.png": lambda p: (Image.fromarray(_pixels(40, 60)).save(p),
                                p.write_bytes(p.read_bytes()[:100])),  # header intact, pixels cut off
    "gone.png": lambda p: Image.fromarray(_pixels(40, 60)).save(p),  # deleted after the import
    "cutoff.png": lambda p: Image.fromarray(_pixels(40, 60)).save(p),  # cut off after the import
    "zero.png": lambda p: p.write_bytes(b""),
    "garbage.jpg": lambda p: p.write_bytes(b"this is not an image"),
    "scripts.png": lambda p: Image.fromarray(_pixels(40, 60)).save(p),
    "long.png": lambda p: Image.fromarray(_pixels(40, 60)).save(p),
    "empty.png": lambda p: Image.fromarray(_pixels(40, 60)).save(p),
}
TEXTS = {"scripts": OTHER_SCRIPTS, "long": [LONG_QUERY]}


def _shape(label, width, height):
    return {"label": label, "shape_type": "polygon",
            "points": [[0, 0], [width / 2, 0], [width / 2, height / 2], [0, height / 2]]}


def write_corpus(folder: Path) -> None:
    folder.mkdir()
    for name, write in IMAGES.items():
        write(folder / name)
        stem = Path(name).stem
        width, height = {"one": (1, 1), "rotated": (40, 80)}.get(stem, (60, 40))  # as shown
        (folder / f"{stem}.json").write_text(json.dumps({
            "text": TEXTS.get(stem, [f"the {stem} thing"]), "is_sentence": False,
            "shapes": [_shape("target", width, height)]}))
    (folder / "missing.json").write_text(json.dumps({"text": ["nothing"], "shapes": [_shape("target", 4, 4)]}))
    (folder / "blank.json").write_text(json.dumps({"text": ["  "], "shapes": [_shape("target", 4, 4)]}))
    Image.fromarray(_pixels(4, 4)).save(folder / "blank.png")


@pytest.fixture
def corpus(tmp_path):
    write_corpus(tmp_path / "val")
    dataset = import_reasonseg(tmp_path / "val", name=f"corpus-{tmp_path.name}")
    (tmp_path / "val" / "gone.png").unlink()
    cutoff = tmp_path / "val" / "cutoff.png"
    cutoff.write_bytes(cutoff.read_bytes()[:100])
    empty = corpus_sample(dataset, "empty")
    empty.query = ""  # an empty query can still come from an edit after the import
    empty.save()
    yield dataset
    dataset.delete()


def corpus_sample(dataset, stem: str):
    return dataset.match({"source_file": {"$regex": f"{stem}.json$"}}).first()


def test_import_skips_unreadable_files_and_names_each(corpus):
    skipped = {Path(item["file"]).name: item["reason"] for item in corpus.info["import"]["skipped"]}
    assert set(skipped) == {"zero.json", "garbage.json", "truncated.json", "missing.json", "blank.json"}
    assert "no image missing.jpg" in skipped["missing.json"]
    assert "non-empty strings" in skipped["blank.json"]
    assert all("image" in skipped[name] for name in ("zero.json", "garbage.json", "truncated.json"))
    assert len(corpus) == 12 + len(OTHER_SCRIPTS) - 1  # one sample per text of the 12 items kept
    assert corpus_sample(corpus, "rotated").ground_truth.mask.shape == (80, 40)  # as shown, not as stored


def test_bad_items_fail_alone_and_the_rest_line_up_with_what_the_app_shows(corpus, tiny_segmenter):
    policy = ScriptedPolicy(box_then_click)
    model = SamVeteranModel(agent=Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)))
    summary = run_agent(corpus, model, batch_size=4)
    bad = {"cutoff": "cannot read image", "gone": "image file not found",
           "empty": "query in field 'query' is not usable text"}
    assert (summary["done"], summary["failed"]) == (len(corpus), len(bad))

    corpus.compute_metadata()
    for sample in corpus:
        stem = Path(sample.filepath).stem
        mask = sample.veteran_mask
        if stem in bad:
            assert mask.end_reason == "invalid_input" and bad[stem] in mask.error, (stem, mask.error)
            assert stem in mask.error or stem == "empty"
            assert mask.mask is None and sample.veteran_steps.detections == []
            continue
        assert mask.end_reason == "agent_stopped" and mask.num_steps == 2, stem
        # the mask has the size FiftyOne (and the App) report for the image: EXIF rotation applied
        assert mask.mask.shape == (sample.metadata.height, sample.metadata.width) == \
               sample.ground_truth.mask.shape, stem
    assert corpus_sample(corpus, "rotated").metadata.width == 40
    seen = {query for query, step, _ in policy.calls if step == 0}
    assert set(OTHER_SCRIPTS) | {LONG_QUERY} <= seen  # passed to the policy exactly as written

    results = evaluate(corpus, "veteran", eval_key="eval")
    assert results.metrics()["count"] == len(corpus)
    ious = dict(zip(corpus.values("filepath"), corpus.values("eval_iou")))
    assert all(ious[p] == 0.0 for p in ious if Path(p).stem in bad)  # no mask counts as an empty one
    assert all(0.0 <= iou <= 1.0 for iou in ious.values())

    wrong = corpus_sample(corpus, "gray")
    wrong.ground_truth = fo.Segmentation(mask=np.ones((20, 30), np.uint8))
    wrong.save()
    with pytest.raises(ValueError, match=f"sample {wrong.id}.*40x60.*20x30|sample {wrong.id}"):
        evaluate(corpus, "veteran", eval_key="eval")
    assert dict(zip(corpus.values("filepath"), corpus.values("eval_iou"))) == ious  # nothing overwritten


def test_long_and_other_script_queries_with_a_real_policy(corpus, tiny_models):
    model = SamVeteranModel(policy=str(tiny_models["policy-qwen2_5_vl"]), segmenter=str(tiny_models["segmenter"]),
                            max_steps=1, device="cpu", max_new_tokens=8)
    view = corpus.match({"source_file": {"$regex": "(scripts|long)"}})
    summary = run_agent(view, model, label_field="tiny", batch_size=4)
    assert (summary["done"], summary["failed"]) == (4, 1)
    masks = dict(zip(view.values("query"), view.values("tiny_mask")))
    long = masks.pop(LONG_QUERY)  # ~10k tokens: more than the tiny policy's 4096-token context
    assert long.end_reason == "invalid_input" and "PromptTooLongError" in long.error
    assert "exceeds the policy's context of 4096 tokens" in long.error
    for query, mask in masks.items():
        assert mask.end_reason != "invalid_input" and mask.mask.shape == (40, 60), query
    policy = model.agent.policy  # byte-level tokens: each script reaches the model intact
    for query in OTHER_SCRIPTS:
        ids = policy.processor.tokenizer(query)["input_ids"]
        assert policy.processor.tokenizer.decode(ids) == query


def _answers_by_query(answers: dict):
    def answer(query, step, sampled):
        return answers[query](step, sampled)
    return answer


def test_bad_policy_answers_are_repaired_or_recorded_in_the_labels(tmp_path, tiny_segmenter):
    """Answers from the step loop's repair rules, as they end up in the FiftyOne labels."""
    dataset = make_dataset(tmp_path, 6)
    good_click = click_answer(positive=[420, 210])
    script = {
        "object 0": lambda step, s: '<answer>{"bbox_2d": [84, 84, 420, 420]}' if step == 0 else click_answer(),
        "object 1": lambda step, s: '<answer>{"bbox_2d": [84, 84, 4' if step == 0 else click_answer(),
        "object 2": lambda step, s: (box_answer([[84, 84, 420, 420], [0, 0, 9, 9]]) if step == 0 else
                                     good_click if step == 1 else click_answer()),
        "object 3": lambda step, s: (box_answer([0, 0, 1, 1]) + box_answer([84, 84, 420, 420]) if step == 0 else
                                     '<answer>{"positive_point": [420, '),  # the retry too
        "object 4": lambda step, s: box_answer([100, 100, 1000, 1000]) if step == 0 else click_answer(),  # 0-1000
        "object 5": lambda step, s: box_answer([84, 84, 420, 420]) if step == 0 else click_answer(),
    }
    policy = ScriptedPolicy(_answers_by_query(script))
    model = SamVeteranModel(agent=Agent(policy, tiny_segmenter, AgentConfig(max_steps=2)))
    summary = run_agent(dataset, model, batch_size=6)
    assert (summary["done"], summary["failed"]) == (6, 0)
    by_query = {s.query: s for s in dataset}

    def notes(query):
        return [note for d in by_query[query].veteran_steps.detections for note in d.notes]

    unclosed = by_query["object 0"]
    assert unclosed.veteran_mask.end_reason == "agent_stopped" and any("unclosed" in n for n in notes("object 0"))
    assert unclosed.veteran_steps.detections[0].prompt_box == pytest.approx([0.1, 0.1, 0.4, 0.4])

    cut = by_query["object 1"].veteran_mask  # truncated JSON, retried once with sampling, still truncated
    assert cut.end_reason == "parse_failure" and "JSON" in cut.error and cut.num_steps == 0
    assert cut.mask.shape == (160, 120) and not cut.mask.any()  # object 1 is 120x160
    assert [(q, s) for q, _, s in policy.calls if q == "object 1"] == [("object 1", False), ("object 1", True)]

    nested = by_query["object 2"]
    assert nested.veteran_mask.num_steps == 2 and any("first was used" in n for n in notes("object 2"))
    assert nested.veteran_steps.detections[0].prompt_box == pytest.approx([0.1, 0.1, 0.4, 0.4])

    repeated = by_query["object 3"]  # two answer blocks: the last; then a click cut off: the box's mask is kept
    assert repeated.veteran_steps.detections[0].prompt_box == pytest.approx([0.1, 0.1, 0.4, 0.4])
    assert repeated.veteran_mask.end_reason == "parse_failure" and repeated.veteran_mask.num_steps == 1
    assert len(repeated.veteran_steps.detections) == 1

    grid = by_query["object 4"]  # a 0-1000 answer to a policy of 840-pixel inputs: clamped, noted
    assert "box clamped into the image" in notes("object 4")
    x, y, w, h = grid.veteran_steps.detections[0].prompt_box
    assert (x, y, x + w, y + h) == pytest.approx((100 / 840, 100 / 840, 1.0, 1.0))
    assert by_query["object 5"].veteran_mask.end_reason == "agent_stopped"  # the batch's good one


def test_pixel_answers_to_a_grid_policy_are_read_on_its_grid(tiny_segmenter, tmp_path):
    """The reverse mix-up cannot be detected (840-pixel values lie on the 0-1000 grid): the family's convention
    decides, so the box is smaller than meant. Pick the family with the checkpoint (`family_for`), never by hand."""
    dataset = make_dataset(tmp_path, 1)
    policy = ScriptedPolicy(_answers_by_query({"object 0": lambda step, s: box_answer([84, 84, 420, 420])
                                               if step == 0 else click_answer()}), family=FAMILIES["qwen3_vl"])
    run_agent(dataset, SamVeteranModel(agent=Agent(policy, tiny_segmenter, AgentConfig(max_steps=1))))
    x, y, w, h = dataset.first().veteran_steps.detections[0].prompt_box
    assert (x, y, x + w, y + h) == pytest.approx((0.084, 0.084, 0.42, 0.42))


@pytest.mark.slow
def test_an_8000_pixel_square_image_runs_at_full_size(tmp_path, tiny_segmenter):
    folder = tmp_path / "val"
    folder.mkdir()
    Image.new("RGB", (8000, 8000), (90, 120, 30)).save(folder / "huge.png")  # flat: a few hundred KB
    (folder / "huge.json").write_text(json.dumps({"text": ["the field"], "shapes": [_shape("target", 8000, 8000)]}))
    dataset = import_reasonseg(folder, name=f"huge-{tmp_path.name}")
    try:
        summary = run_agent(dataset, SamVeteranModel(agent=Agent(ScriptedPolicy(box_then_click), tiny_segmenter,
                                                                 AgentConfig(max_steps=3))))
        assert (summary["done"], summary["failed"]) == (1, 0)
        dataset.compute_metadata()
        sample = dataset.first()
        assert sample.veteran_mask.mask.shape == (sample.metadata.height, sample.metadata.width) == (8000, 8000)
        assert sample.veteran_mask.num_steps == 2
        results = evaluate(dataset, "veteran", eval_key="eval")
        assert results.metrics()["count"] == 1 and 0.0 <= dataset.first().eval_iou <= 1.0
    finally:
        dataset.delete()
