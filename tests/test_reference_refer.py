"""Imports and exports against the reference code: REFER (lichengunc/refer), G_REFER (gRefCOCO) and LISA's loaders.

`Refer`, `GRefer` and `lisa_mask` below re-implement, from reading those repositories, what their loaders do:

- REFER ``getRefIds(split=...)``: ``testA``/``testB``/``testC`` keep refs whose split contains the last letter,
  ``test`` every split containing "test", ``train``/``val`` exact. ``getMask(ref)``: the ref's one annotation;
  ``type(segmentation[0]) == list`` means polygons (``frPyObjects``), anything else is handed to ``decode`` as RLE;
  the decoded H x W x N stack is summed over N and cast to uint8.
- G_REFER ``getRefIds(split=...)``: exact split names, an unknown one raises. ``getMaskByRef(ref, merge=True)``:
  ``[-1]`` is an empty mask; ``iscrowd`` annotations are left out; each mask as REFER's, summed, values > 1 set to 1.
- LISA ``ValDataset`` / ``ReferSegDataset``: an empty ``segmentation`` is an empty mask, otherwise REFER's rule with
  RLE ``counts`` encoded to bytes first.

Every comparison is pixel for pixel.
"""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_veteran.plugin.datasets import import_refcoco
from sam_veteran.plugin.datasets.exporters import export_refer

IMAGES = ("images", "mscoco", "images", "train2014")


# --- ports of the reference code ---------------------------------------------------------------------------------

def _decode_like_refer(segmentation, height, width):
    if type(segmentation[0]) == list:  # noqa: E721  (REFER's own test)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = [{**part, "counts": part["counts"].encode() if isinstance(part["counts"], str) else part["counts"]}
               for part in segmentation]
    return np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)


class Refer:
    def __init__(self, data_root, dataset, split_by):
        folder = data_root / dataset
        self.refs = pickle.loads((folder / f"refs({split_by}).p").read_bytes())
        instances = json.loads((folder / "instances.json").read_text())
        self.anns = {a["id"]: a for a in instances["annotations"]}
        self.imgs = {i["id"]: i for i in instances["images"]}
        self.ref_to_ann = {r["ref_id"]: self.anns[r["ann_id"]] for r in self.refs}

    def get_ref_ids(self, split=""):
        refs = self.refs
        if split in ("testA", "testB", "testC"):
            refs = [r for r in refs if split[-1] in r["split"]]
        elif split in ("testAB", "testBC", "testAC"):
            refs = [r for r in refs if r["split"] == split]
        elif split == "test":
            refs = [r for r in refs if "test" in r["split"]]
        elif split in ("train", "val"):
            refs = [r for r in refs if r["split"] == split]
        elif split:
            raise SystemExit(f"No such split [{split}]")
        return [r["ref_id"] for r in refs]

    def get_mask(self, ref):
        ann, image = self.ref_to_ann[ref["ref_id"]], self.imgs[ref["image_id"]]
        return _decode_like_refer(ann["segmentation"], image["height"], image["width"])


class GRefer:
    def __init__(self, data_root, split_by="unc"):
        folder = data_root / "grefcoco"
        self.refs = json.loads((folder / f"grefs({split_by}).json").read_text())
        instances = json.loads((folder / "instances.json").read_text())
        self.anns = {-1: None, **{a["id"]: a for a in instances["annotations"]}}
        self.imgs = {i["id"]: i for i in instances["images"]}
        self.splits = {r["split"] for r in self.refs}

    def get_ref_ids(self, split=()):
        split = [split] if isinstance(split, str) else list(split)
        for name in split:
            if name not in self.splits:
                raise ValueError(f"Invalid split name: {name}")
        return [r["ref_id"] for r in self.refs if not split or r["split"] in split]

    def get_mask(self, ann):
        if ann["iscrowd"]:
            raise ValueError("Crowd object")
        image = self.imgs[ann["image_id"]]
        return _decode_like_refer(ann["segmentation"], image["height"], image["width"])

    def get_mask_by_ref(self, ref):
        if ref["ann_id"] == [-1]:
            image = self.imgs[ref["image_id"]]
            return np.zeros((image["height"], image["width"]), np.uint8)
        masks = [self.get_mask(self.anns[a]) for a in ref["ann_id"] if not self.anns[a]["iscrowd"]]
        merged = sum(masks)
        merged[np.where(merged > 1)] = 1
        return merged


def lisa_mask(ann, image_info):
    if len(ann["segmentation"]) == 0:
        return np.zeros((image_info["height"], image_info["width"]), np.uint8)
    return _decode_like_refer(ann["segmentation"], image_info["height"], image_info["width"])


# --- data --------------------------------------------------------------------------------------------------------

def _write_folder(root, dataset, refs, annotations, images, split_by, image_source=None):
    folder = root / dataset
    folder.mkdir(parents=True)
    image_dir = root.joinpath(*IMAGES)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for record in images:
        if image_source is not None:
            Image.open(image_source).convert("RGB").save(image_dir / record["file_name"])
        else:
            pixels = rng.integers(0, 255, (record["height"], record["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / record["file_name"])
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    if dataset == "grefcoco":
        (folder / f"grefs({split_by}).json").write_text(json.dumps(refs))
    else:
        (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _ref(ref_id, ann_id, split="val", image_id=1, sentences=("a thing",)):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "sentences": [{"sent_id": ref_id * 10 + i, "sent": s, "tokens": s.split()}
                          for i, s in enumerate(sentences)]}


def _ann(ann_id, segmentation, image_id=1, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd, "segmentation": segmentation}


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _uncompressed(mask):
    flat = mask.ravel(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _blob(height, width, rng):
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 12)
    return (((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) | (rng.random((height, width)) < 0.02)).astype(np.uint8)


H, W = 40, 56


def _refcoco_source(tmp_path):
    """Every segmentation form REFER or LISA reads, plus a bare and an uncompressed RLE (COCO's crowd forms)."""
    rng = np.random.default_rng(3)
    masks = {i: _blob(H, W, rng) for i in range(1, 5)}
    annotations = [_ann(1, [[4, 4, 30, 6, 28, 30, 6, 26], [40, 10, 50, 10, 50, 20]]),  # two polygons
                   _ann(2, [_rle(masks[2])]),  # a list of RLE dicts (REFER's RLE form)
                   _ann(3, [_rle(masks[3]), _rle(masks[1])]),  # two RLE parts
                   _ann(4, _rle(masks[4])),  # a bare RLE dict
                   _ann(5, _uncompressed(masks[1]))]  # uncompressed counts
    splits = ["val", "testA", "testB", "train", "testA"]
    refs = [_ref(i, i, split=splits[i - 1], sentences=(f"thing {i}", f"object {i}")) for i in range(1, 6)]
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": W, "height": H}]
    return _write_folder(tmp_path / "source", "refcoco", refs, annotations, images, "unc"), masks


def _target(sample):
    return (sample.ground_truth.mask == 1).astype(np.uint8)


# --- tests -------------------------------------------------------------------------------------------------------

def test_refcoco_import_matches_refer_and_the_export_reads_back_pixel_identical(tmp_path):
    source, masks = _refcoco_source(tmp_path)
    dataset = import_refcoco(source, "refcoco", split=None)
    assert dataset.info["import"]["skipped"] == []
    refer = Refer(source, "refcoco", "unc")
    by_ref = {s.ref_id: s for s in dataset}
    for ref in refer.refs:
        if not isinstance(refer.ref_to_ann[ref["ref_id"]]["segmentation"], list):
            with pytest.raises(KeyError):  # REFER cannot read a bare RLE dict: the form exports used to have
                refer.get_mask(ref)
            continue
        np.testing.assert_array_equal(np.minimum(refer.get_mask(ref), 1), _target(by_ref[ref["ref_id"]]))
    np.testing.assert_array_equal(_target(by_ref[4]), masks[4])
    np.testing.assert_array_equal(_target(by_ref[5]), masks[1])

    export_refer(dataset, tmp_path / "export", dataset="refcoco")
    exported = Refer(tmp_path / "export", "refcoco", "unc")
    assert len(exported.refs) == 5
    for ref in exported.refs:
        sample = by_ref[ref["ref_id"]]
        mask = exported.get_mask(ref)
        np.testing.assert_array_equal(mask, _target(sample))  # one part: no sum above 1
        image = exported.imgs[ref["image_id"]]
        np.testing.assert_array_equal(lisa_mask(exported.ref_to_ann[ref["ref_id"]], image), _target(sample))
    back = import_refcoco(tmp_path / "export", "refcoco", split=None)
    assert {s.sent_id: _target(s).tobytes() for s in back} == {s.sent_id: _target(s).tobytes() for s in dataset}
    dataset.delete()
    back.delete()


@pytest.mark.parametrize("split", ["test", "testA", "testB", "train", "val"])
def test_splits_are_selected_as_refer_selects_them(tmp_path, split):
    source, _ = _refcoco_source(tmp_path)
    dataset = import_refcoco(source, "refcoco", split=split)
    assert sorted(set(dataset.values("ref_id"))) == sorted(Refer(source, "refcoco", "unc").get_ref_ids(split))
    if split == "test":
        assert sorted(dataset.distinct("tags")) == ["testA", "testB"]
    dataset.delete()


def _grefcoco_source(tmp_path):
    rng = np.random.default_rng(5)
    blobs = [_blob(H, W, rng) for _ in range(3)]
    annotations = [_ann(1, [[2, 2, 20, 2, 20, 18, 2, 18]]), _ann(2, [_rle(blobs[0])]),
                   _ann(3, [_rle(blobs[1])], iscrowd=1), _ann(4, [[30, 20, 50, 20, 50, 38, 30, 38]])]
    refs = [_ref(1, [1, 2], split="val"), _ref(2, [2, 3, 4], split="testA"), _ref(3, [-1], split="testB"),
            _ref(4, [4], split="train"), _ref(5, [3], split="val")]
    for ref in refs:
        ref["no_target"] = ref["ann_id"] == [-1]
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": W, "height": H}]
    return _write_folder(tmp_path / "source", "grefcoco", refs, annotations, images, "unc")


def test_grefcoco_matches_grefer_drops_crowds_and_exports_pixel_identical(tmp_path):
    source = _grefcoco_source(tmp_path)
    dataset = import_refcoco(source, "grefcoco", split=None)
    skipped = {s["file"]: s["reason"] for s in dataset.info["import"]["skipped"]}
    assert list(skipped) == ["grefs(unc).json ref 5"] and "iscrowd" in skipped["grefs(unc).json ref 5"]
    grefer = GRefer(source)
    by_ref = {s.ref_id: s for s in dataset}
    assert by_ref[2].ann_ids == [2, 4]  # the crowd annotation 3 is not part of the target
    for ref in grefer.refs:
        if ref["ref_id"] == 5:
            with pytest.raises((TypeError, ValueError)):  # G_REFER cannot build a mask from crowds alone either
                grefer.get_mask_by_ref(ref)
            continue
        np.testing.assert_array_equal(grefer.get_mask_by_ref(ref), _target(by_ref[ref["ref_id"]]))

    export_refer(dataset, tmp_path / "export", dataset="grefcoco")
    exported = GRefer(tmp_path / "export")
    assert sorted(exported.get_ref_ids(["testA", "testB"])) == sorted(
        by_ref[r].ref_id for r in (2, 3))
    with pytest.raises(ValueError):
        exported.get_ref_ids("test")  # G_REFER has no combined test split; neither does our import
    for ref in exported.refs:
        np.testing.assert_array_equal(exported.get_mask_by_ref(ref), _target(by_ref[ref["ref_id"]]))
    with pytest.raises(ValueError, match="no refs of split 'test'"):
        import_refcoco(tmp_path / "export", "grefcoco", split="test")
    dataset.delete()


def _coco_two_cats(shared_data, tmp_path, dataset):
    coco = shared_data / "coco_two_cats"
    annotations = [{**a, "image_id": 39769} for a in json.loads((coco / "coco_annotations.txt").read_text())]
    image = Image.open(coco / "000000039769.png")
    images = [{"id": 39769, "file_name": "COCO_train2014_000000039769.jpg", "width": image.width,
               "height": image.height}]
    if dataset == "grefcoco":
        cats = [a["id"] for a in annotations if a["category_id"] == 17]
        refs = [_ref(1, cats, image_id=39769, sentences=("both cats",)),
                _ref(2, [-1], image_id=39769, sentences=("the dog",))]
        refs += [_ref(10 + i, [a["id"]], image_id=39769, split="testA") for i, a in enumerate(annotations)]
    else:
        refs = [_ref(10 + i, a["id"], image_id=39769, split=("testA", "testB", "val")[i % 3],
                     sentences=(f"object {i}",)) for i, a in enumerate(annotations)]
    return _write_folder(tmp_path / "source", dataset, refs, annotations, images, "unc", coco / "000000039769.png")


@pytest.mark.parametrize("dataset", ["refcoco", "grefcoco"])
def test_real_coco_polygons_round_trip_pixel_identical(shared_data, tmp_path, dataset):
    """The real COCO polygons of ../shared/data/coco_two_cats: the reference API's mask of the source, our import,
    and the reference API's mask of our export are the same pixels."""
    source = _coco_two_cats(shared_data, tmp_path, dataset)
    imported = import_refcoco(source, dataset, split=None)
    assert imported.info["import"]["skipped"] == []
    by_ref = {s.ref_id: s for s in imported}
    export_refer(imported, tmp_path / "export", dataset=dataset)
    if dataset == "grefcoco":
        original, exported = GRefer(source), GRefer(tmp_path / "export")
        masks = {r["ref_id"]: original.get_mask_by_ref(r) for r in original.refs}
        exported_masks = {r["ref_id"]: exported.get_mask_by_ref(r) for r in exported.refs}
    else:
        original, exported = Refer(source, dataset, "unc"), Refer(tmp_path / "export", dataset, "unc")
        masks = {r["ref_id"]: original.get_mask(r) for r in original.refs}
        exported_masks = {r["ref_id"]: exported.get_mask(r) for r in exported.refs}
    assert sorted(masks) == sorted(exported_masks) == sorted(by_ref)
    assert max(int(m.max()) for m in masks.values()) == 1  # no annotation's polygons overlap here
    for ref_id, mask in masks.items():
        np.testing.assert_array_equal(_target(by_ref[ref_id]), mask)
        np.testing.assert_array_equal(exported_masks[ref_id], mask)
    assert int(masks[1 if dataset == "grefcoco" else 10].sum()) > 0
    imported.delete()


def _malformed_source(tmp_path):
    full = np.zeros((H, W), np.uint8)
    full[5:20, 5:30] = 1
    good = _rle(full)
    short = mask_utils.encode(np.asfortranarray(full[:, :40].copy()))["counts"].decode()  # fewer than H*W pixels
    long = mask_utils.encode(np.asfortranarray(np.zeros((H, W + 8), np.uint8)))["counts"].decode()
    uncompressed = _uncompressed(full)
    cases = {
        1: [{"size": [H, W], "counts": short}],
        2: {"size": [H, W], "counts": short},
        3: [{"size": [H, W], "counts": long}],
        4: {"size": [H, W], "counts": uncompressed["counts"][:-1]},
        5: [good, {"size": [H, W + 1], "counts": good["counts"]}],
        6: [good, [1, 1, 9, 1, 9, 9]],
        7: [{"counts": good["counts"]}],
        8: {"size": [H, W], "counts": good["counts"][:-1] + "\u00e9"},
        9: {"size": [H, W], "counts": good["counts"] + "o"},  # ends inside a number
        10: [],
        11: [good],
    }
    annotations = [_ann(i, segmentation) for i, segmentation in cases.items()]
    refs = [_ref(i, i) for i in cases]
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": W, "height": H}]
    return _write_folder(tmp_path / "source", "refcocog", refs, annotations, images, "umd"), full


def test_every_malformed_form_is_skipped_with_its_reason(tmp_path):
    source, full = _malformed_source(tmp_path)
    dataset = import_refcoco(source, "refcocog")
    (sample,) = dataset
    assert sample.ref_id == 11
    np.testing.assert_array_equal(sample.ground_truth.mask, full)
    reasons = {s["file"]: s["reason"] for s in dataset.info["import"]["skipped"]}
    expected = {1: "annotation 1 RLE 0: RLE counts cover 1600 pixels, the image has 2240",
                2: "annotation 2: RLE counts cover 1600 pixels, the image has 2240",
                3: "annotation 3 RLE 0: RLE counts cover 2560 pixels, the image has 2240",
                4: "annotation 4: RLE counts cover",
                5: "annotation 5 RLE 1: RLE size [40, 57] differs from the image 40x56",
                6: "annotation 6: segmentation mixes polygons and RLE dicts",
                7: "annotation 7 RLE 0: RLE needs 'counts' and 'size'",
                8: "annotation 8: RLE counts string has a character outside",
                9: "annotation 9: RLE counts string ends inside a number",
                10: "annotation 10: empty segmentation list"}
    assert sorted(reasons) == sorted(f"refs(umd).p ref {i}" for i in expected)
    for ref_id, reason in expected.items():
        assert reasons[f"refs(umd).p ref {ref_id}"].startswith(reason), reasons[f"refs(umd).p ref {ref_id}"]
    dataset.delete()
