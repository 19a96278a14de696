"""Importers on synthetic folders in both formats (every rule) and on the real annotation files in ../shared/data."""

import json
import pickle

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_veteran import import_reasonseg, import_refcoco
from sam_veteran.plugin.datasets import UnsafePathError, common


def _image(path, width, height):
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)


def _reasonseg_item(folder, stem, shapes, texts=("the thing",), is_sentence=False, size=(100, 80), image=True):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        _image(folder / f"{stem}.jpg", *size)
    (folder / f"{stem}.json").write_text(json.dumps({"text": list(texts), "is_sentence": is_sentence,
                                                     "shapes": shapes}))


def _rect(label, x1, y1, x2, y2):
    return {"label": label, "points": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "shape_type": "polygon"}


def _by_source(dataset):
    return {(s.source_file, s.text_index): s for s in dataset}


def test_reasonseg_fills_largest_first_skips_flags_and_reports_malformed(tmp_path):
    val = tmp_path / "val"
    _reasonseg_item(val, "a", [_rect("target", 10, 10, 60, 50), _rect("ignore", 20, 20, 30, 30),
                               {"label": "flag", "points": [[1, 1], [2, 2]]}],
                    texts=["what holds the cup?", "the cup holder"], is_sentence=True)
    # A small target drawn over a large ignore region: smaller polygons win wherever they overlap.
    _reasonseg_item(val, "b", [_rect("target", 40, 30, 50, 40), _rect("ignore", 30, 20, 90, 70)])
    _reasonseg_item(val, "two_points", [{"label": "target", "points": [[1, 1], [5, 5]]}])
    _reasonseg_item(val, "outside", [_rect("target", 10, 10, 150, 50)])
    _reasonseg_item(val, "no_image", [_rect("target", 10, 10, 60, 50)], image=False)
    (val / "broken.json").write_text("{not json")
    _image(val / "broken.jpg", 100, 80)

    dataset = import_reasonseg(val)
    items = _by_source(dataset)
    assert sorted(items) == [("a.json", 0), ("a.json", 1), ("b.json", 0)]
    first = items[("a.json", 0)]
    assert first.query == "what holds the cup?" and first.is_sentence is True and first.tags == ["val"]
    assert items[("a.json", 1)].query == "the cup holder"
    expected = np.zeros((80, 100), np.uint8)
    expected[10:51, 10:61] = 1
    expected[20:31, 20:31] = 255
    np.testing.assert_array_equal(first.ground_truth.mask, expected)
    second = np.zeros((80, 100), np.uint8)
    second[20:71, 30:91] = 255
    second[30:41, 40:51] = 1
    np.testing.assert_array_equal(items[("b.json", 0)].ground_truth.mask, second)

    skipped = {s["file"]: s["reason"] for s in dataset.info["import"]["skipped"]}
    assert set(skipped) == {"two_points.json", "outside.json", "no_image.json", "broken.json"}
    assert "at least 3" in skipped["two_points.json"]
    assert "outside" in skipped["outside.json"]
    assert "no image" in skipped["no_image.json"]
    assert "JSON" in skipped["broken.json"]


def test_reasonseg_root_with_splits_first_text_only_and_names(tmp_path):
    for split in ("train", "val"):
        _reasonseg_item(tmp_path / split, "x", [_rect("target", 5, 5, 20, 20)], texts=["one", "two", "three"])
    dataset = import_reasonseg(tmp_path, name="rs", first_text_only=True)
    assert sorted((s.tags[0], s.query) for s in dataset) == [("train", "one"), ("val", "one")]
    assert dataset.info["import"]["first_text_only"] is True
    with pytest.raises(ValueError, match="already exists"):
        import_reasonseg(tmp_path, name="rs")
    assert len(import_reasonseg(tmp_path, name="rs", split="val", overwrite=True)) == 3
    with pytest.raises(UnsafePathError):
        import_reasonseg(tmp_path, split="../val")


def test_reasonseg_with_nothing_valid_leaves_no_dataset(tmp_path):
    _reasonseg_item(tmp_path / "val", "bad", [{"label": "target", "points": [[1, 1]]}])
    before = set(fo.list_datasets())
    with pytest.raises(ValueError, match="no items imported.*bad.json"):
        import_reasonseg(tmp_path / "val", name="never")
    assert set(fo.list_datasets()) == before and not fo.dataset_exists("never")


# --- RefCOCO family -------------------------------------------------------------------------------------------

def _refer_folder(tmp_path, dataset="refcocog", refs=None, annotations=None, images=None, grefs=False,
                  split_by="umd"):
    folder = tmp_path / dataset
    folder.mkdir(parents=True)
    image_dir = tmp_path / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    for record in images:
        if not record.pop("_missing", False) and "/" not in record["file_name"]:
            _image(image_dir / record["file_name"], record["width"], record["height"])
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": 1, "name": "thing"}]}))
    if grefs:
        (folder / f"grefs({split_by}).json").write_text(json.dumps(refs))
    else:
        (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return tmp_path


def _ref(ref_id, ann_id, image_id=1, split="val", sentences=("a thing",)):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "sentences": [{"sent_id": ref_id * 10 + i, "sent": s, "tokens": s.split()}
                          for i, s in enumerate(sentences)]}


def _box_mask(height, width, x1, y1, x2, y2):
    mask = np.zeros((height, width), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _uncompressed_counts(mask):
    """COCO's uncompressed RLE by hand: run lengths over the column-major pixels, starting with a run of zeros."""
    counts, value, run = [], 0, 0
    for pixel in mask.ravel(order="F"):
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    return counts + [run]


def test_refcoco_polygons_rle_and_malformed_refs(tmp_path):
    height, width = 48, 64
    uncompressed = _box_mask(height, width, 5, 5, 15, 25)
    counts = _uncompressed_counts(uncompressed)
    compressed_mask = _box_mask(height, width, 30, 10, 50, 20)
    compressed = mask_utils.encode(np.asfortranarray(compressed_mask))
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[20, 20, 40, 20, 40, 40, 20, 40]]},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"size": [height, width], "counts": counts}},
        {"id": 3, "image_id": 1, "category_id": 1,
         "segmentation": {"size": [height, width], "counts": compressed["counts"].decode()}},
        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},
        {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 200, 1, 200, 30]]},
        {"id": 6, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]},
    ]
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": width, "height": height},
              {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 32, "height": 32,
               "_missing": True}]
    refs = [_ref(1, 1, sentences=("the square", "middle box")), _ref(2, 2), _ref(3, 3), _ref(4, 4), _ref(5, 5),
            _ref(6, 999), _ref(7, 6, image_id=2), _ref(8, 1, split="train")]
    root = _refer_folder(tmp_path, refs=refs, annotations=annotations, images=images)

    dataset = import_refcoco(root, dataset="refcocog", split="val")
    by_sent = {s.sent_id: s for s in dataset}
    assert sorted(by_sent) == [10, 11, 20, 30]
    assert by_sent[10].query == "the square" and by_sent[11].query == "middle box" and by_sent[10].tags == ["val"]
    polygon = by_sent[10].ground_truth.mask
    assert polygon.shape == (height, width) and set(np.unique(polygon)) == {0, 1}
    assert polygon[25:35, 25:35].all() and not polygon[:15].any()
    np.testing.assert_array_equal(by_sent[20].ground_truth.mask, uncompressed)
    np.testing.assert_array_equal(by_sent[30].ground_truth.mask, compressed_mask)
    assert (by_sent[20].ref_id, by_sent[20].ann_ids, by_sent[20].image_id) == (2, [2], 1)
    skipped = {s["file"]: s["reason"] for s in dataset.info["import"]["skipped"]}
    assert set(skipped) == {"refs(umd).p ref 4", "refs(umd).p ref 5", "refs(umd).p ref 6", "refs(umd).p ref 7"}
    assert "at least 3" in skipped["refs(umd).p ref 4"] and "outside" in skipped["refs(umd).p ref 5"]
    assert "annotation 999" in skipped["refs(umd).p ref 6"] and "not found" in skipped["refs(umd).p ref 7"]

    first_only = import_refcoco(root, dataset="refcocog", split=None, first_text_only=True)
    assert sorted(s.sent_id for s in first_only) == [10, 20, 30, 80]
    assert sorted(first_only.distinct("tags")) == ["train", "val"]


def test_grefcoco_unions_annotations_and_no_target_is_empty(tmp_path):
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
                   {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[20, 20, 28, 20, 28, 28, 20, 28]]}]
    images = [{"id": 1, "file_name": "one.png", "width": 40, "height": 30}]
    refs = [_ref(1, [1, 2], sentences=("both squares",)), _ref(2, [-1], sentences=("the dog",))]
    root = _refer_folder(tmp_path, dataset="grefcoco", refs=refs, annotations=annotations, images=images,
                         grefs=True, split_by="unc")
    dataset = import_refcoco(root, dataset="grefcoco")
    both, none = sorted(dataset, key=lambda s: s.ref_id)
    assert both.ann_ids == [1, 2] and both.category_ids == [1, 2] and both.no_target is False
    assert both.ground_truth.mask[5, 5] == 1 and both.ground_truth.mask[24, 24] == 1
    assert none.ann_ids == [] and none.no_target is True and not none.ground_truth.mask.any()
    assert none.ground_truth.mask.shape == (30, 40)


def test_refcoco_escaping_file_name_refuses_and_leaves_nothing(tmp_path, monkeypatch):
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 10]]}]
    images = [{"id": 1, "file_name": "fine.png", "width": 20, "height": 20},
              {"id": 2, "file_name": "../../../secret.png", "width": 20, "height": 20}]
    refs = [_ref(i, 1, sentences=("a", "b")) for i in range(1, 4)] + [_ref(9, 1, image_id=2)]
    root = _refer_folder(tmp_path, dataset="refcoco", refs=refs, annotations=annotations, images=images,
                         split_by="unc")
    monkeypatch.setattr(common, "CHUNK", 2)  # so that samples were already added when the bad ref comes
    before = set(fo.list_datasets())
    with pytest.raises(UnsafePathError, match="secret.png"):
        import_refcoco(root, dataset="refcoco", name="escape")
    assert set(fo.list_datasets()) == before


def test_refcoco_pickle_with_classes_is_refused(tmp_path):
    images = [{"id": 1, "file_name": "fine.png", "width": 20, "height": 20}]
    root = _refer_folder(tmp_path, refs=[], annotations=[], images=images)
    (root / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps([_ref(1, 1), np.dtype("float32")]))
    with pytest.raises(ValueError, match="only plain data"):
        import_refcoco(root)


# --- real annotation files ------------------------------------------------------------------------------------

def test_real_reasonseg_annotations(shared_data, tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    for path in sorted((shared_data / "reasonseg_format").glob("*.json")):
        annotation = json.loads(path.read_text())
        corners = np.concatenate([np.asarray(s["points"]) for s in annotation["shapes"]]).max(axis=0)
        _image(folder / f"{path.stem}.jpg", int(corners[0]) + 20, int(corners[1]) + 20)
        (folder / path.name).write_bytes(path.read_bytes())
    dataset = import_reasonseg(folder)
    assert dataset.info["import"]["skipped"] == []
    items = {s.source_file: s for s in dataset}
    scene = items["scene0104_00_0.json"]
    assert scene.is_sentence is True and scene.query.startswith("When we need to access")
    for sample in items.values():
        values = set(np.unique(sample.ground_truth.mask))
        assert values == {0, 1, 255}
    monkey = items["206674234_4cb520b13d_o.json"]
    assert monkey.is_sentence is False and monkey.query == "something that the monkey uses to pierce its food"
    # Checked against another rasteriser (pycocotools): the target minus the ignore polygon drawn over it.
    height, width = scene.ground_truth.mask.shape
    annotation = json.loads((folder / "scene0104_00_0.json").read_text())
    rasters = {label: mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        [np.ravel(s["points"]).tolist() for s in annotation["shapes"] if s["label"] == label], height, width)))
        for label in ("target", "ignore")}
    assert _iou(scene.ground_truth.mask == 1, rasters["target"] & ~rasters["ignore"].astype(bool)) > 0.95
    assert _iou(scene.ground_truth.mask == 255, rasters["ignore"]) > 0.9


def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / (a | b).sum()


def test_real_coco_polygons_as_refcoco(shared_data, tmp_path):
    source = shared_data / "coco_two_cats"
    annotations = json.loads((source / "coco_annotations.txt").read_text())
    for a in annotations:
        a["image_id"] = 39769
    images = [{"id": 39769, "file_name": "000000039769.png", "width": 640, "height": 480}]
    cats = [a for a in annotations if a["category_id"] == 17]
    left, right = sorted(cats, key=lambda a: a["bbox"][0])
    refs = [_ref(1, left["id"], image_id=39769, sentences=("the cat on the left",)),
            _ref(2, right["id"], image_id=39769, sentences=("the cat on the right",))]
    image_dir = tmp_path / "coco"
    image_dir.mkdir()
    (image_dir / "000000039769.png").write_bytes((source / "000000039769.png").read_bytes())
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    dataset = import_refcoco(root, dataset="refcoco", images_dir=image_dir)
    by_ref = {s.ref_id: s for s in dataset}
    for ref_id, annotation in ((1, left), (2, right)):
        mask = by_ref[ref_id].ground_truth.mask
        assert abs(int(mask.sum()) - annotation["area"]) / annotation["area"] < 0.02
        x, y, w, h = annotation["bbox"]
        ys, xs = np.nonzero(mask)
        assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1.5
    assert by_ref[1].ground_truth.mask[:, :320].sum() > by_ref[1].ground_truth.mask[:, 320:].sum()
