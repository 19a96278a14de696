"""The data builder: a FiftyOne view becomes the three task streams with correct targets."""

from collections import Counter

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from sam_veteran.plugin.agent import FAMILIES
from sam_veteran.plugin.agent.overlay import policy_view
from sam_veteran.plugin.agent.policy import PolicyRequest, messages
from sam_veteran.trainer.rewards import (AMBIGUOUS, AUXILIARY, GOOD, GROUNDING, MASK, REFINE, EmbeddingCache,
                                         mask_box, mask_centre, mask_iou, tolerant_iou)
from sam_veteran.trainer.tasks import (TaskConfig, allocate, build_tasks, corrupt_mask, read_view, render_record,
                                       task_dataset)


@pytest.fixture
def view(tmp_path):
    """Six usable samples (a rectangle target, a 255 ignore border on the first) and three unusable ones."""
    rng = np.random.default_rng(1)
    dataset = fo.Dataset()
    samples = []
    for i in range(9):
        width, height = (96, 64) if i % 2 else (64, 80)
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        mask = np.zeros((height, width), np.uint8)
        mask[10 + i: 40, 12: 30 + 2 * i] = 1
        if i == 0:
            mask[9, 12:30] = 255
        query = f"object {i}"
        if i == 6:
            query = "  "
        if i == 7:
            mask[:] = 0
        samples.append(fo.Sample(filepath=str(path), query=query,
                                 ground_truth=None if i == 8 else fo.Segmentation(mask=mask)))
    dataset.add_samples(samples)
    return dataset


def test_read_view_keeps_usable_samples_and_reports_the_rest(view, caplog):
    records = read_view(view)
    assert len(records) == 6
    first = records[0]
    assert first.query == "object 0" and first.image_size == (64, 80)
    assert first.ignore is not None and first.ignore[9, 12:30].all() and not first.target[9].any()
    assert mask_box(first.target) == (12.0, 10.0, 30.0, 40.0)
    assert "skipped 3 of 9 samples" in caplog.text and "no query" in caplog.text and "no target pixel" in caplog.text
    chunked = read_view(view, chunk_size=2)  # a few samples per values() call: the same records, in order
    assert [(r.sample_id, r.box, r.target_rle, r.ignore_rle) for r in chunked] == \
        [(r.sample_id, r.box, r.target_rle, r.ignore_rle) for r in records]
    with pytest.raises(ValueError, match="no usable training sample"):
        read_view(view.match(fo.ViewField("query") == "  "))


def test_a_mask_that_does_not_fit_its_image_is_skipped(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(path)
    dataset = fo.Dataset()
    mask = np.ones((40, 20), np.uint8)  # transposed: 20 wide, 40 high
    dataset.add_samples([fo.Sample(filepath=str(path), query="q", ground_truth=fo.Segmentation(mask=mask)),
                         fo.Sample(filepath=str(path), query="q", ground_truth=fo.Segmentation(mask=mask.T.copy()))])
    records = read_view(dataset)  # metadata is computed where missing
    assert len(records) == 1 and records[0].image_size == (40, 20)


def test_allocate_follows_the_ratio():
    assert allocate(10, {GROUNDING: 0.4, MASK: 0.4, AUXILIARY: 0.2}) == {GROUNDING: 4, MASK: 4, AUXILIARY: 2}
    assert allocate(7, {GROUNDING: 1, MASK: 1, AUXILIARY: 1}) == {GROUNDING: 3, MASK: 2, AUXILIARY: 2}
    assert allocate(5, {GROUNDING: 1}) == {GROUNDING: 5, MASK: 0, AUXILIARY: 0}
    with pytest.raises(ValueError, match="task ratios"):
        TaskConfig(ratios={"grounding": 1, "segmentation": 1})


def test_build_tasks_produces_the_three_tasks_with_correct_targets(view, tiny_segmenter):
    samples = read_view(view)
    by_id = {s.sample_id: s for s in samples}
    config = TaskConfig(ratios={GROUNDING: 1, MASK: 2, AUXILIARY: 1}, items_per_sample=4, good_share=0.4,
                        clean_share=0.5)
    records = build_tasks(samples, config, seed=3)
    pending = [r for r in records if r.task == MASK and r.mask_source == "segmenter"]
    assert pending and all(r.shown_rle is None and r.case is None for r in pending)  # masks made on first use
    dataset = task_dataset(records, FAMILIES["qwen2_5_vl"].with_input_size((56, 56)), EmbeddingCache(tiny_segmenter),
                           config)
    for i in range(len(dataset)):
        assert dataset[i]["record"] is records[i]
    counts = Counter(r.task for r in records)
    assert counts == {GROUNDING: 6, MASK: 12, AUXILIARY: 6}
    assert {r.sample_id for r in records if r.task == GROUNDING} == set(by_id)  # every sample once per stream
    for r in records:
        sample = by_id[r.sample_id]
        assert r.gt_box == mask_box(sample.target) and r.image_size == sample.image_size
        assert np.array_equal(r.gt_mask(), sample.target)
        if r.task == MASK:
            shown = r.shown_mask()
            iou = tolerant_iou(shown, sample.target, sample.ignore, config.edge_tolerance)
            assert r.shown_iou == pytest.approx(iou)
            expected = GOOD if iou >= config.good_iou else REFINE if iou < config.refine_iou else AMBIGUOUS
            assert r.case == expected
            if r.mask_source == "ground_truth":  # drawn good, the segmenter's mask on the tight box fell short
                assert np.array_equal(shown, sample.target) and r.case == GOOD and r.drawn_good
                segmented = tiny_segmenter.segment(tiny_segmenter.encode([r.load_image()])[0], sample.box).mask
                assert tolerant_iou(segmented, sample.target, sample.ignore) < config.good_iou
            else:
                segmented = tiny_segmenter.segment(tiny_segmenter.encode([r.load_image()])[0], r.prompt_box).mask
                assert np.array_equal(shown, segmented)
            if r.drawn_good:
                assert r.case == GOOD and r.prompt_box == sample.box
        if r.task == AUXILIARY:
            shown, gt = r.shown_mask(), sample.target
            removed, added = gt & ~shown, shown & ~gt
            assert (r.case == GOOD) == (not removed.any() and not added.any())  # a clean item: stop is right
            assert (r.false_negative_centre is None) == (not removed.any())
            assert (r.false_positive_centre is None) == (not added.any())
            if removed.any():
                assert r.false_negative_centre == pytest.approx(mask_centre(removed))
            if added.any():
                assert r.false_positive_centre == pytest.approx(mask_centre(added))
                assert not (added & (sample.ignore if sample.ignore is not None else False)).any()
    cases = Counter(r.case for r in records if r.task == MASK)
    assert cases[GOOD] >= 1 and cases[REFINE] >= 1  # both "good enough" and "needs refinement"
    assert {r.case for r in records if r.task == AUXILIARY} == {GOOD, REFINE}  # clean and corrupted


def test_corruptions_cover_add_remove_and_both(view):
    sample = read_view(view)[2]
    rng = np.random.default_rng(0)
    config = TaskConfig()
    for kind, fn, fp in (("add", False, True), ("remove", True, False), ("both", True, True)):
        corrupted, fn_centre, fp_centre = corrupt_mask(sample, kind, config, rng)
        assert (fn_centre is not None, fp_centre is not None) == (fn, fp)
        assert mask_iou(corrupted, sample.target) < 1.0


def test_rows_are_the_agents_own_prompts(view, tiny_segmenter):
    family = FAMILIES["qwen2_5_vl"].with_input_size((56, 56))
    records = build_tasks(read_view(view), TaskConfig(items_per_sample=1), seed=0)
    dataset = task_dataset(records, family, EmbeddingCache(tiny_segmenter))
    assert len(dataset) == len(records)
    for i in range(len(records)):
        row = dataset[i]
        record = records[i]  # a mask item gets its segmenter mask on first use
        assert row["record"] is record and row["task"] == record.task
        assert row["image"].size == (56, 56)
        prompt = family.grounding_prompt(record.query) if record.task == GROUNDING else family.refine_prompt(record.query)
        assert row["prompt"] == messages(PolicyRequest(row["image"], prompt), family)
        shown = None if record.task == GROUNDING else record.shown_mask()
        assert np.array_equal(np.asarray(row["image"]), np.asarray(policy_view(record.load_image(), (56, 56), shown)))
        assert np.array_equal(np.asarray(render_record(record, family)["image"]), np.asarray(row["image"]))


def test_mask_items_are_refreshed_from_the_policys_own_boxes(view, tiny_segmenter):
    from sam_veteran.trainer.refresh import refresh_mask_items
    from tests.scripted import ScriptedPolicy, box_answer

    samples = read_view(view)
    records = build_tasks(samples, TaskConfig(ratios={MASK: 1, GROUNDING: 0}, items_per_sample=1, good_share=1.0),
                          seed=0)
    family = FAMILIES["qwen2_5_vl"].with_input_size((100, 100))
    # the policy answers a box of 10-50% of the view for "object 1" and nonsense for the others
    policy = ScriptedPolicy(lambda query, step, sampled: box_answer([10, 10, 50, 50]) if query == "object 1"
                            else "no idea", family=family)
    before = list(records)
    assert refresh_mask_items(records, range(len(records)), policy, tiny_segmenter, TaskConfig()) == 1
    changed = [i for i, r in enumerate(records) if r is not before[i]]
    assert len(changed) == 1
    record = records[changed[0]]
    assert record.query == "object 1" and record.mask_source == "segmenter"
    width, height = record.image_size
    assert record.prompt_box == pytest.approx((0.1 * width, 0.1 * height, 0.5 * width, 0.5 * height))
    embedding = tiny_segmenter.encode([record.load_image()])[0]
    assert np.array_equal(record.shown_mask(), tiny_segmenter.segment(embedding, record.prompt_box).mask)
    assert record.shown_iou == pytest.approx(tolerant_iou(record.shown_mask(), record.gt_mask(), record.ignore_mask()))
