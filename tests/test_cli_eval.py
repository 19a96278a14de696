"""`sam-veteran import ...` and `sam-veteran eval ...` in-process, on real files and a real database."""

import json
import pickle

import fiftyone as fo
import numpy as np
from PIL import Image

from sam_veteran.cli import main


def test_import_reasonseg_then_eval(tmp_path, capsys):
    folder = tmp_path / "val"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.jpg")
    square = [[5, 5], [15, 5], [15, 15], [5, 15]]
    (folder / "a.json").write_text(json.dumps({"text": ["the square", "the box"], "is_sentence": False,
                                               "shapes": [{"label": "target", "points": square}]}))
    (folder / "b.json").write_text(json.dumps({"text": ["x"], "shapes": []}))
    assert main(["import", "reasonseg", str(folder), "--name", "cli-rs"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 items into dataset 'cli-rs' (tags: val)" in out and "skipped b.json: no image" in out
    dataset = fo.load_dataset("cli-rs")
    assert dataset.persistent

    first = dataset.first()
    first["pred"] = fo.Segmentation(mask=(first.ground_truth.mask == 1).astype(np.uint8))
    first.save()
    assert main(["eval", "cli-rs", "pred", "--eval-key", "cli", "--protocol", "empty_zero", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["protocol"] == "empty_zero" and report["metrics"] == {"gIoU": 0.5, "cIoU": 0.5, "count": 2}
    assert report["by_query_type"]["phrase"]["count"] == 2
    assert dataset.list_evaluations() == ["cli"]
    dataset.delete()


def test_import_refcoco_all_splits(tmp_path, capsys):
    images = tmp_path / "coco"
    images.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(images / "i.jpg")
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "i.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 8, 1, 8, 8, 1, 8]]}]}))
    refs = [{"ref_id": r, "ann_id": 3, "image_id": 7, "split": split, "sentences": [{"sent_id": r, "sent": "it"}]}
            for r, split in ((1, "testA"), (2, "val"))]
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    assert main(["import", "refcoco", str(tmp_path), "--dataset", "refcoco", "--split", "all",
                 "--images-dir", str(images)]) == 0
    assert "imported 2 items into dataset 'refcoco-all'" in capsys.readouterr().out
    dataset = fo.load_dataset("refcoco-all")
    assert sorted(dataset.distinct("tags")) == ["testA", "val"]
    dataset.delete()
