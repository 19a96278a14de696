"""The scene world: reproducible by (split, index), exact ground truth, every query kind answerable, and the
held-out colour/shape pairs only in the test split."""

import numpy as np
import pytest

from sam_veteran.plugin.scenes import CORNERS, HELD_OUT, QUERY_KINDS, make_scene, make_scenes


def test_same_split_and_index_give_the_same_scene():
    a, b = make_scene("val", 7), make_scene("val", 7)
    assert a.query == b.query and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(make_scene("train", 7).image, a.image)


@pytest.mark.parametrize("kind", QUERY_KINDS)
def test_each_kind_names_exactly_its_target(kind):
    for scene in make_scenes("train", 6, kind=kind):
        target = [s for s in scene.shapes if (s.color, s.kind) == scene.target]
        assert scene.kind == kind
        assert scene.mask.dtype == np.uint8 and set(np.unique(scene.mask)) <= {0, 1}
        assert any(np.array_equal(s.mask, scene.mask > 0) for s in target)  # the target's visible area, exactly
        if kind == "referring":
            assert scene.query == f"the {scene.target[0]} {scene.target[1]}"
        if kind == "reasoning":
            excluded = scene.query.rsplit(" ", 1)[1]
            pool = [s for s in scene.shapes if s.color != excluded]
            corners = sorted(CORNERS[s.kind] for s in pool)
            best = corners[-1] if "most" in scene.query else corners[0]
            assert CORNERS[scene.target[1]] == best and corners.count(best) == 1


def test_visible_masks_never_overlap_and_the_ground_truth_is_what_is_seen():
    scene = make_scene("train", 3)
    total = sum(s.mask.astype(int) for s in scene.shapes)
    assert total.max() <= 1  # occlusion: each pixel belongs to at most one visible shape


def test_held_out_pairs_only_in_the_test_split():
    for split in ("train", "val"):
        for scene in make_scenes(split, 40):
            assert not any((s.color, s.kind) in HELD_OUT for s in scene.shapes)
    held = [s for s in make_scenes("test", 40) if s.held_out]
    assert 4 <= len(held) <= 24


def test_unknown_split_or_kind_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        make_scene("dev", 0)
    with pytest.raises(ValueError, match="unknown query kind"):
        make_scene("train", 0, kind="counting")
