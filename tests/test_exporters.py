import hashlib
import json
import pickle
import shutil
from collections import Counter

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from sam_veteran.plugin.datasets import import_reasonseg, import_refcoco
from sam_veteran.plugin.datasets.common import fill_polygons
from sam_veteran.plugin.datasets.exporters import MANIFEST, export_reasonseg, export_refer
from sam_veteran.plugin.datasets.polygons import mask_polygons


def digest(path):
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


def ring_mask(width, height, rng):
    """A target with a background hole and an ignore island inside another hole, plus a separate ignore blob."""
    mask = np.zeros((height, width), np.uint8)
    mask[5:30, 5:35] = 1
    mask[10:15, 10:15] = 0
    mask[18:26, 20:30] = 255
    mask[20:24, 23:27] = 1  # target inside the ignore island
    mask[2:6, 40:50] = 255
    mask[32:, :] = (rng.random((height - 32, width)) < 0.3).astype(np.uint8)  # speckle
    return mask


@pytest.fixture
def source(tmp_path):
    """Three images, several queries per image, two different masks on one image, ignore regions, two splits."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "source"
    folder.mkdir()
    paths = {}
    for name, (w, h) in {"a.png": (60, 40), "b.jpg": (52, 44), "c.png": (30, 20)}.items():
        paths[name] = folder / name
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[name])
    a_first, a_second = ring_mask(60, 40, rng), np.zeros((40, 60), np.uint8)
    a_second[:, 50:] = 1
    b_mask = np.zeros((44, 52), np.uint8)
    b_mask[4:40, 4:48], b_mask[12:30, 12:30] = 255, 1
    c_mask = np.zeros((20, 30), np.uint8)
    c_mask[:5, :5] = 255
    rows = [("a.png", "the ring", a_first, False, "val"), ("a.png", "the round thing", a_first, False, "val"),
            ("a.png", "the bar on the right", a_second, False, "val"),
            ("b.jpg", "what would you sit on?", b_mask, True, "test"), ("b.jpg", "the seat", b_mask, False, "test"),
            ("c.png", "nothing is there", c_mask, False, "val")]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(paths[image]), query=query, ground_truth=fo.Segmentation(mask=mask),
                              is_sentence=sentence, tags=[split]) for image, query, mask, sentence, split in rows])
    yield ds
    ds.delete()


def items(ds, ignore_as_background=False):
    out = []
    for filepath, query, label, tags in zip(*ds.values(["filepath", "query", "ground_truth", "tags"])):
        mask = label.get_mask()
        if ignore_as_background:
            mask = np.where(mask == 255, 0, mask)
        out.append((digest(filepath), query, mask.tobytes(), mask.shape, tuple(tags)))
    return Counter(out)


def test_polygons_refill_exactly_as_lisa_fills(rng):
    for _ in range(200):
        h, w = rng.integers(2, 40, 2)
        mask = (rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.uint8)
        mask[(rng.random((h, w)) < 0.3) & (mask == 0)] = 255
        polygons = [(p, 1) for p in mask_polygons(mask == 1)] + [(p, 255) for p in mask_polygons(mask == 255)]
        assert all(len(p) >= 3 for p, _ in polygons)
        assert np.array_equal(fill_polygons(polygons, w, h), mask)


def test_reasonseg_round_trip(source, tmp_path):
    out = tmp_path / "reasonseg"
    summary = export_reasonseg(source, out)
    assert summary["items"] == 6 and summary["images"] == 5 and summary["splits"] == ["test", "val"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == \
        ["test/b.json", "test/b_1.json", "val/a.json", "val/a_1.json", "val/c.json"]
    merged = json.loads((out / "val" / "a.json").read_text())
    assert merged["text"] == ["the ring", "the round thing"] and merged["is_sentence"] is False
    assert {s["label"] for s in merged["shapes"]} == {"target", "ignore"}
    assert set(merged["shapes"][0]) == {"label", "labels", "shape_type", "image_name", "points", "group_id",
                                        "group_ids", "flags"}
    back = import_reasonseg(out)
    assert items(back) == items(source)
    assert sorted(back.values("is_sentence")) == sorted(source.values("is_sentence"))
    back.delete()


def test_refer_round_trip(source, tmp_path):
    view = source.match(fo.ViewField("query") != "nothing is there")
    out = tmp_path / "refer"
    summary = export_refer(view, out, dataset="refcocog")
    assert (summary["items"], summary["refs"], summary["images"], summary["ignore_dropped"]) == (5, 3, 2, 4)
    refs = pickle.loads((out / "refcocog" / "refs(umd).p").read_bytes())
    assert sorted(len(r["sentences"]) for r in refs) == [1, 2, 2]
    annotations = json.loads((out / "refcocog" / "instances.json").read_text())["annotations"]
    assert all(len(a["segmentation"]) == 1 and isinstance(a["segmentation"][0]["counts"], str) for a in annotations)
    back = import_refcoco(out, "refcocog", split=None)
    assert items(back) == items(view, ignore_as_background=True)
    back.delete()


def test_chunked_reading_gives_the_same_export(source, tmp_path, monkeypatch):
    import sam_veteran.plugin.datasets.exporters as exporters

    export_reasonseg(source, tmp_path / "whole")
    monkeypatch.setattr(exporters, "CHUNK", 2)
    export_reasonseg(source, tmp_path / "chunked")
    for path in (tmp_path / "whole").rglob("*.json"):
        assert path.read_text() == (tmp_path / "chunked" / path.relative_to(tmp_path / "whole")).read_text()


def test_refer_keeps_source_ids(source, tmp_path):
    view = source.match(fo.ViewField("query") != "nothing is there")
    export_refer(view, tmp_path / "one", dataset="refcoco")
    first = import_refcoco(tmp_path / "one", "refcoco", split=None)
    export_refer(first.sort_by("query"), tmp_path / "two", dataset="refcoco")
    second = import_refcoco(tmp_path / "two", "refcoco", split=None)
    fields = ["query", "ref_id", "sent_id", "image_id", "ann_ids"]
    assert sorted(zip(*first.values(fields))) == sorted(zip(*second.values(fields)))
    first.delete()
    second.delete()


def test_empty_target_needs_grefcoco(source, tmp_path):
    with pytest.raises(ValueError, match=r"sample \w+ .*c\.png.*grefcoco"):
        export_refer(source, tmp_path / "refer", dataset="refcocog")
    assert not (tmp_path / "refer").exists()
    export_refer(source, tmp_path / "grefer", dataset="grefcoco")
    back = import_refcoco(tmp_path / "grefer", "grefcoco", split=None)
    assert items(back) == items(source, ignore_as_background=True)
    assert back.match(fo.ViewField("no_target")).values("query") == ["nothing is there"]
    back.delete()


def test_refuses_to_overwrite(source, tmp_path):
    out = tmp_path / "out"
    export_reasonseg(source, out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_reasonseg(source, out)
    export_reasonseg(source.limit(1), out, overwrite=True)
    assert len(list(out.rglob("*.json"))) == 1 and (out / MANIFEST).is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by a sam-veteran export"):
        export_reasonseg(source, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_samples_are_named_and_nothing_is_written(source, tmp_path):
    broken = source.match(fo.ViewField("query") == "the seat").first()
    broken.ground_truth = None
    broken.save()
    untagged = source.match(fo.ViewField("query") == "the ring").first()
    untagged.tags = []
    untagged.save()
    with pytest.raises(ValueError) as error:
        export_reasonseg(source, tmp_path / "out")
    message = str(error.value)
    assert f"sample {broken.id}" in message and "no ground-truth mask" in message
    assert f"sample {untagged.id}" in message and "no split tag" in message
    assert list(tmp_path.iterdir()) == [tmp_path / "source"]  # no export folder, no staging folder left
    with pytest.raises(ValueError, match="plain folder name"):
        export_reasonseg(source.exists("ground_truth"), tmp_path / "out", split="../elsewhere")
    export_reasonseg(source.exists("ground_truth"), tmp_path / "out", split="curated")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "curated"]


def test_real_reasonseg_annotations_survive_export(shared_data, tmp_path):
    """LISA's own files: imported, exported, imported again, the masks are the same pixel for pixel."""
    folder = tmp_path / "val"
    folder.mkdir()
    for json_path in sorted((shared_data / "reasonseg_format").glob("*.json")):
        shutil.copy(json_path, folder)
        points = np.concatenate([np.asarray(s["points"]) for s in json.loads(json_path.read_text())["shapes"]])
        w, h = (np.ceil(points.max(axis=0)) + 10).astype(int)
        Image.new("RGB", (int(w), int(h))).save(folder / f"{json_path.stem}.jpg")
    first = import_reasonseg(folder)
    export_reasonseg(first, tmp_path / "export")
    second = import_reasonseg(tmp_path / "export")
    assert items(second) == items(first)
    assert {255, 1} <= set(np.unique(np.concatenate([m.get_mask().ravel() for m in second.values("ground_truth")])))
    first.delete()
    second.delete()


def test_real_coco_masks_survive_refer_export(shared_data, tmp_path):
    """Real COCO polygons in a REFER folder: import, export (RLE), import again: same masks, same ids."""
    coco = shared_data / "coco_two_cats"
    annotations = json.loads((coco / "coco_annotations.txt").read_text())
    image = Image.open(coco / "000000039769.png")
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "images" / "mscoco" / "images" / "train2014").mkdir(parents=True)
    image.convert("RGB").save(root / "images" / "mscoco" / "images" / "train2014" / "cats.jpg")
    instances = {"images": [{"id": 39769, "file_name": "cats.jpg", "width": image.width, "height": image.height}],
                 "annotations": [{**a, "image_id": 39769} for a in annotations], "categories": []}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": 10 + i, "ann_id": a["id"], "image_id": 39769, "category_id": a["category_id"],
             "split": "testA", "sentences": [{"sent_id": 100 + 2 * i, "sent": f"object {i}"},
                                             {"sent_id": 101 + 2 * i, "sent": f"thing {i}"}]}
            for i, a in enumerate(annotations)]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    first = import_refcoco(root, "refcoco", split=None)
    export_refer(first, tmp_path / "export", dataset="refcoco")
    second = import_refcoco(tmp_path / "export", "refcoco", split=None)
    fields = ["query", "ref_id", "sent_id", "image_id", "ann_ids", "category_ids", "tags"]
    assert sorted(zip(*first.values(fields))) == sorted(zip(*second.values(fields)))
    assert items(second) == items(first) and len(second) == 2 * len(annotations)
    first.delete()
    second.delete()


def test_cli_exports_a_tagged_view(source, tmp_path, capsys):
    from sam_veteran.cli import main

    assert main(["export", "reasonseg", source.name, str(tmp_path / "rs"), "--tags", "val"]) == 0
    assert "exported 4 items (3 images, splits: val)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "rs").iterdir()) == [MANIFEST, "val"]
    source.save_view("test-only", source.match_tags("test"))
    assert main(["export", "refer", source.name, str(tmp_path / "refer"), "--saved-view", "test-only",
                 "--benchmark", "refcoco", "--split-by", "unc"]) == 0
    assert "2 samples had ignore pixels" in capsys.readouterr().out
    assert (tmp_path / "refer" / "refcoco" / "refs(unc).p").is_file()
    assert main(["export", "reasonseg", source.name, str(tmp_path / "rs")]) == 2  # a CLI error: one line, a hint
    error = capsys.readouterr().err.splitlines()
    assert error[0].startswith("sam-veteran export reasonseg: error: ") and "pass --overwrite" in error[0]
