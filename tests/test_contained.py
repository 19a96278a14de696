"""Bad input fails only its own sample, or is refused up front with a clear message, in every reader.

A file that Pillow opens but cannot decode (a DDS texture saved as ``.jpg`` raises NotImplementedError), a very
elongated image, ReasonSeg JSON that parses badly or holds what the database cannot store, segmenter paths that
are not checkpoints, unreadable mask files, label fields of another type.
"""

import json
import struct
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran import import_reasonseg
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.agent.images import ImageLoadError, load_image
from sam_veteran.plugin.agent.segmenters import SamSegmenter
from sam_veteran.plugin.curation.triage import triage
from sam_veteran.plugin.datasets.exporters import export_reasonseg
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.model import SamVeteranModel

UNDECODABLE = "Unimplemented pixel format"


def write_undecodable(path: Path) -> Path:
    """A DDS header with a pixel format Pillow does not implement: `Image.open` raises NotImplementedError."""
    header = struct.pack("<4sIIIIIII", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<II4sIIIII", 32, 0x4, b"ZZZZ", 0, 0, 0, 0, 0)
    path.write_bytes(header + pixel_format + struct.pack("<IIIII", 0x1000, 0, 0, 0, 0) + b"\0" * 256)
    return path


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 8)
    yield ds
    ds.delete()


def model(segmenter):
    return SamVeteranModel(agent=Agent(scripted_policy(box_then_click), segmenter, AgentConfig(max_steps=3)))


def test_an_image_its_decoder_cannot_handle_fails_its_own_sample_in_every_reader(dataset, tiny_segmenter, tmp_path):
    photo = write_undecodable(tmp_path / "photo.jpg")
    with pytest.raises(ImageLoadError, match=f"cannot read image .*photo.jpg: NotImplementedError: {UNDECODABLE}"):
        load_image(photo)
    bad_id = dataset.values("id")[2]
    dataset.set_values("filepath", {bad_id: str(photo)}, key_field="id")

    summary = run_agent(dataset, model(tiny_segmenter), batch_size=4)
    assert (summary["done"], summary["failed"]) == (8, 1)
    dataset.apply_model(model(tiny_segmenter), label_field="applied", prompt_field="query", batch_size=4)
    for field in ("veteran_mask", "applied_mask"):
        labels = dict(zip(*dataset.values(["id", field])))
        assert UNDECODABLE in labels[bad_id].error and "photo.jpg" in labels[bad_id].error
        assert all(label.end_reason == "agent_stopped" for i, label in labels.items() if i != bad_id), field

    mask = np.zeros((20, 30), np.uint8)
    dataset.set_values("ground_truth", [fo.Segmentation(mask=mask)] * 8)
    with pytest.raises(ValueError, match=f"sample {bad_id} .*photo.jpg.*{UNDECODABLE}"):
        export_reasonseg(dataset, tmp_path / "out", split="val")

    folder = tmp_path / "val"
    folder.mkdir()
    for stem, write in (("good", lambda p: Image.new("RGB", (30, 20)).save(p)), ("photo", write_undecodable)):
        write(folder / f"{stem}.jpg")
        (folder / f"{stem}.json").write_text(json.dumps({"text": ["it"], "shapes": []}))
    imported = import_reasonseg(folder)
    assert imported.count("id") == 1
    (skipped,) = imported.info["import"]["skipped"]
    assert skipped["file"] == "photo.json" and UNDECODABLE in skipped["reason"]
    imported.delete()


def test_an_image_too_elongated_for_the_policy_fails_with_its_size(tmp_path, tiny_segmenter):
    Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(tmp_path / "line.png")
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "line.png"), query="the line"))
    assert run_agent(ds, model(tiny_segmenter))["failed"] == 1
    assert ds.first().veteran_mask.error.startswith("image is 5000x1: its aspect ratio is beyond 200:1")
    ds.delete()


def test_reasonseg_files_that_parse_badly_or_hold_unstorable_text_are_skipped_alone(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    shapes = [{"label": "target", "points": [[1, 1], [9, 1], [9, 9]]}]
    files = {"deep": "[" * 100_000 + "]" * 100_000,
             "surrogate": '{"text": ["the \\ud800 cup"], "shapes": []}',
             "flag_text": json.dumps({"text": ["a"], "is_sentence": "false", "shapes": shapes}),
             "flag_true": json.dumps({"text": ["b"], "is_sentence": "True", "shapes": shapes}),
             "flag_odd": json.dumps({"text": ["c"], "is_sentence": "maybe", "shapes": shapes}),
             "good": json.dumps({"text": ["d"], "is_sentence": True, "shapes": shapes})}
    for stem, text in files.items():
        Image.new("RGB", (30, 20)).save(folder / f"{stem}.jpg")
        (folder / f"{stem}.json").write_text(text)
    dataset = import_reasonseg(folder)
    skipped = {s["file"]: s["reason"] for s in dataset.info["import"]["skipped"]}
    assert set(skipped) == {"deep.json", "surrogate.json", "flag_odd.json"}
    assert "nested too deeply" in skipped["deep.json"]
    assert "text 0 is not valid Unicode" in skipped["surrogate.json"]
    assert "'is_sentence' must be true or false, not 'maybe'" in skipped["flag_odd.json"]
    flags = dict(zip(dataset.values("query"), dataset.values("is_sentence")))
    assert flags == {"a": False, "b": True, "d": True}
    dataset.delete()


@pytest.mark.parametrize("content", [None, b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"not a checkpoint"])
def test_a_segmenter_path_that_is_not_a_checkpoint_says_so(tmp_path, content):
    path = Path("/etc/passwd") if content is None else tmp_path / "sam.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a segment-anything checkpoint") as error:
        SamSegmenter.from_checkpoint(path, device="cpu")
    assert "weights_only" not in str(error.value)


def test_triage_of_a_mask_file_that_cannot_be_read_flags_that_sample_alone(dataset, tiny_segmenter, tmp_path):
    run_agent(dataset, model(tiny_segmenter), batch_size=8)
    bad_id = dataset.values("id")[1]
    photo = write_undecodable(tmp_path / "mask.png")
    dataset.set_values("veteran_mask", {bad_id: fo.Segmentation(mask_path=str(photo), end_reason="agent_stopped")},
                       key_field="id")
    summary = triage(dataset)
    assert summary["count"] == 8 and summary["reasons"]["unreadable_mask"] == 1
    rows = dict(zip(*dataset.values(["id", "veteran_triage_reasons"])))
    assert rows[bad_id] == ["unreadable_mask"] and all("unreadable_mask" not in r for i, r in rows.items()
                                                       if i != bad_id)
    assert dataset[bad_id]["veteran_triage_score"] == 1.0


@pytest.mark.parametrize("everywhere", [True, False])
def test_label_fields_of_another_type_are_refused_before_any_model_loads(dataset, everywhere):
    ids = dataset.values("id")
    values = {i: "not a mask" for i in (ids if everywhere else ids[5:])}
    dataset.set_values("veteran_mask", values, key_field="id")
    with pytest.raises(ValueError, match="the field 'veteran_mask' of .* holds StringField values, not "
                                         "Segmentation.*another label_field"):
        run_agent(dataset, policy="/nowhere/policy", segmenter="/nowhere/sam.pth")
    assert dataset.values("veteran_mask") == [values.get(i) for i in ids]
