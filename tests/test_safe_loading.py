"""Loading what strangers publish runs none of their code, importers stay inside the dataset folder, and a Hub
token in the environment is never written anywhere (database, run configs, output files, logs)."""

import json
import logging
import shutil
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from bson import json_util
from PIL import Image

from sam_veteran import evaluate, import_reasonseg, import_refcoco
from sam_veteran.plugin.agent import TransformersPolicy
from sam_veteran.plugin.datasets import UnsafePathError
from test_datasets import _image, _reasonseg_item, _rect, _ref, _refer_folder
from test_run_operator import URI

SECRET = "hf_NotARealTokenButASecret0123456789"

EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("code from the checkpoint ran")
from transformers import Qwen2_5_VLForConditionalGeneration as EvilModel, AutoProcessor as EvilProcessor
"""


def database_text() -> str:
    """Every document of every collection of this session's FiftyOne database, as one string."""
    db = fo.core.odm.get_db_conn()
    return "\n".join(json_util.dumps(doc) for name in db.list_collection_names() for doc in db[name].find())


def files_text(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_a_policy_folder_asking_to_run_its_code_loads_without_running_it(tiny_models, tmp_path):
    folder = tmp_path / "stranger-policy"
    shutil.copytree(tiny_models["policy-qwen2_5_vl"], folder)
    marker = tmp_path / "ran.txt"
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    auto_map = {"AutoModelForImageTextToText": "evil.EvilModel", "AutoProcessor": "evil.EvilProcessor"}
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        if (folder / name).exists():
            config = json.loads((folder / name).read_text())
            (folder / name).write_text(json.dumps({**config, "auto_map": auto_map}))
    policy = TransformersPolicy.from_pretrained(folder, device="cpu", max_new_tokens=4)
    assert not marker.exists()
    assert type(policy.model).__module__.startswith("transformers.models.qwen2_5_vl")
    assert policy.family.name == "qwen2_5_vl"


@pytest.mark.parametrize("name", ["../outside.png", "/ABSOLUTE/outside.png", "link.png"])
def test_refcoco_refuses_file_names_that_leave_the_images_folder(tmp_path, name):
    outside = tmp_path / "outside.png"
    _image(outside, 20, 20)
    name = name.replace("/ABSOLUTE", str(tmp_path))
    images = [{"id": 1, "file_name": name, "width": 20, "height": 20, "_missing": True}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 10]]}]
    root = _refer_folder(tmp_path / "refer", dataset="refcoco", refs=[_ref(1, 1)], annotations=annotations,
                         images=images, split_by="unc")
    if name == "link.png":
        (root / "images" / "mscoco" / "images" / "train2014" / "link.png").symlink_to(outside)
    before = set(fo.list_datasets())
    with pytest.raises(UnsafePathError, match=f"{Path(name).name}.*(points|resolves) outside"):
        import_refcoco(root, dataset="refcoco", name="escape")
    assert set(fo.list_datasets()) == before


def test_reasonseg_refuses_an_image_linked_in_from_outside(tmp_path):
    _reasonseg_item(tmp_path / "val", "fine", [_rect("target", 5, 5, 20, 20)])
    _reasonseg_item(tmp_path / "val", "linked", [_rect("target", 5, 5, 20, 20)], image=False)
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(tmp_path / "private.jpg")
    (tmp_path / "val" / "linked.jpg").symlink_to(tmp_path / "private.jpg")
    before = set(fo.list_datasets())
    with pytest.raises(UnsafePathError, match="linked.json: file name 'linked.jpg' resolves outside"):
        import_reasonseg(tmp_path / "val", name="linked-in")
    assert set(fo.list_datasets()) == before


def test_a_hub_token_in_the_environment_is_stored_nowhere(installed_plugin, tmp_path,
                                                          monkeypatch, capsys, caplog, tiny_models):
    """A run, an evaluation and a queued delegated run with HF_TOKEN set: the token is in no database document
    (samples, run configs, delegated-operation parameters), no output and no log record."""
    import fiftyone.operators as foo

    from sam_veteran.cli import main

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    _reasonseg_item(tmp_path / "val", "a", [_rect("target", 5, 5, 20, 20)])
    dataset = import_reasonseg(tmp_path / "val", name="token-test", persistent=True)
    try:
        assert main(["run", "token-test", "--tiny", "--max-steps", "1", "--json"]) == 0
        assert main(["eval", "token-test", "veteran", "--json"]) == 0
        evaluate(dataset, "veteran", eval_key="second")
        queued = foo.get_operator(URI)(dataset, delegate=True, policy=str(tiny_models["policy-qwen2_5_vl"]),
                                       segmenter=str(tiny_models["segmenter"]))
        assert queued.error is None
        stored = database_text()
        assert "token-test" in stored and "reasoning_segmentation" in stored  # the run config is in there
        assert '"label_field"' in stored  # and the queued operation's parameters
        assert SECRET not in stored
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err
        assert SECRET not in "\n".join(record.getMessage() for record in caplog.records)
    finally:
        dataset.delete()
