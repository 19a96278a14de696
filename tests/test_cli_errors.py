"""A mistake on the command line is one line naming the flag, a hint, exit code 2; `--debug` shows the traceback.
Also the commands that set up and describe the environment: install-plugin, info."""

import json
import time
import uuid

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from sam_veteran.cli import main
from tests.agent_data import make_dataset


def error_lines(capsys) -> list[str]:
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines


def assert_one_line_error(capsys, command: str, *needles: str) -> str:
    lines = error_lines(capsys)
    assert len(lines) == 2, lines  # the error, then the hint
    assert lines[0].startswith(f"sam-veteran {command}: error: ")
    assert lines[1].startswith("hint: ") and lines[1].endswith("--debug shows the traceback")
    for needle in needles:
        assert needle in lines[0] + lines[1]
    return lines[0]


@pytest.fixture
def dataset(tmp_path):
    dataset = make_dataset(tmp_path, 2, name=f"cli-errors-{uuid.uuid4().hex[:8]}")
    yield dataset
    dataset.delete()


def test_eval_with_a_wrong_field(dataset, capsys):
    assert main(["eval", dataset.name, "nope"]) == 2
    assert_one_line_error(capsys, "eval", "no field 'nope'")
    assert main(["eval", "no-such-dataset", "veteran"]) == 2
    assert_one_line_error(capsys, "eval", "no FiftyOne dataset named 'no-such-dataset'", "--database-uri")


def test_debug_shows_the_traceback(dataset):
    with pytest.raises(ValueError, match="no field 'nope'"):
        main(["eval", dataset.name, "nope", "--debug"])


def test_export_names_the_flags_not_the_python_arguments(tmp_path, capsys):
    folder = tmp_path / "val"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.jpg")
    (folder / "a.json").write_text(json.dumps({"text": ["the square"], "shapes": [
        {"label": "target", "points": [[5, 5], [15, 5], [15, 15], [5, 15]]}]}))
    name = f"cli-export-{uuid.uuid4().hex[:8]}"
    assert main(["import", "reasonseg", str(folder), "--name", name]) == 0
    dataset = fo.load_dataset(name)
    try:
        dataset.untag_samples("val")
        assert main(["export", "reasonseg", name, str(tmp_path / "out")]) == 2
        lines = error_lines(capsys)
        assert lines[0] == "sam-veteran export reasonseg: error: 1 sample(s) cannot be exported, nothing was written:"
        assert "pass --split SPLIT to put every sample in one split" in lines[1] and "split=" not in lines[1]
        assert lines[-1].startswith("hint: ")
        assert main(["export", "reasonseg", name, str(tmp_path / "out"), "--split", "val"]) == 0
        capsys.readouterr()
        assert main(["export", "reasonseg", name, str(tmp_path / "out"), "--split", "val"]) == 2
        assert "overwrite=True" not in assert_one_line_error(capsys, "export reasonseg", "pass --overwrite")
        assert main(["import", "reasonseg", str(folder), "--name", name]) == 2
        assert_one_line_error(capsys, "import reasonseg", "already exists; pass --overwrite")
    finally:
        dataset.delete()


def test_import_of_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"text": ["x"], "shapes": []}))
    assert main(["import", "reasonseg", str(tmp_path), "--name", f"none-{uuid.uuid4().hex[:8]}"]) == 2
    assert_one_line_error(capsys, "import reasonseg", "no items imported", "no image")


def test_a_model_that_cannot_be_downloaded_fails_at_once(dataset, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    assert main(["run", dataset.name, "--policy", "someone/not-cached-model", "--segmenter", "vit_b"]) == 2
    assert time.monotonic() - started < 45  # transformers alone retried for about a minute before failing
    output = capsys.readouterr()
    assert "This run downloads someone/not-cached-model from https://huggingface.co/someone/not-cached-model" in output.out
    lines = output.err.strip().splitlines()
    assert lines[0] == ("sam-veteran run: error: someone/not-cached-model is not in the Hugging Face cache and "
                        "HF_HUB_OFFLINE is set")
    assert "--tiny" in lines[1]
    assert not dataset.has_field("veteran_mask")
    assert main(["run", dataset.name, "--policy", "./no-such-folder", "--segmenter", "vit_b"]) == 2
    assert_one_line_error(capsys, "run", "./no-such-folder is neither a local folder nor a hub id")


def test_deprecated_aliases_still_work_and_say_so(tmp_path, capsys):
    from sam_veteran.cli import build_parser

    args = build_parser().parse_args(["import", "refcoco", str(tmp_path), "--dataset", "refcoco+"])
    assert args.benchmark == "refcoco+"
    assert "--dataset is deprecated, use --benchmark" in capsys.readouterr().err
    args = build_parser().parse_args(["export", "refer", "ds", str(tmp_path), "--query-field", "question"])
    assert args.prompt_field == "question"
    assert "--query-field is deprecated, use --prompt-field" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == 2 and "the following arguments are required: dataset" in capsys.readouterr().err


def test_install_plugin_makes_the_plugins_folder_and_fiftyone_finds_it(tmp_path, capsys, monkeypatch):
    import fiftyone.plugins as fop

    plugins = tmp_path / "fresh" / "__plugins__"  # a fresh FiftyOne: the folder does not exist yet
    monkeypatch.setattr(fo.config, "plugins_dir", str(plugins))
    assert main(["install-plugin"]) == 0
    assert "installed: " in capsys.readouterr().out
    assert "@sam-veteran/fiftyone" in {p.name for p in fop.list_plugins(enabled="all")}
    assert main(["install-plugin"]) == 0 and "already installed" in capsys.readouterr().out
    (plugins / "sam-veteran").unlink()
    (plugins / "sam-veteran").mkdir()
    assert main(["install-plugin"]) == 2
    assert_one_line_error(capsys, "install-plugin", "exists and is not a link")


def test_info_says_which_database_is_used(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"database: the database at {fo.config.database_uri}" in out
    assert "plugins folder: " in out and "SAM checkpoints, demo images, tiny models: " in out


def test_a_failed_demo_leaves_the_previous_demo_dataset(tmp_path, tiny_models, capsys):
    from sam_veteran.plugin.demo import build_demo_dataset, run_demo

    name = f"demo-{uuid.uuid4().hex[:8]}"
    previous = build_demo_dataset(tmp_path / "before", num_samples=2, name=name)
    ids = previous.values("id")
    broken = tmp_path / "broken-policy"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises((OSError, ValueError)):
        run_demo(str(broken), str(tiny_models["segmenter"]), tmp_path / "after", num_samples=2, name=name)
    assert fo.dataset_exists(name) and fo.load_dataset(name).values("id") == ids
    assert main(["demo", "--policy", str(broken), "--segmenter", str(tiny_models["segmenter"]), "--no-app"]) == 2
    assert capsys.readouterr().err.startswith("sam-veteran demo: error: ")
    fo.load_dataset(name).delete()


def test_the_environment_defaults_keep_output_quiet_and_yield_to_the_user(monkeypatch):
    from sam_veteran.cli import build_parser, configure_environment

    for name in ("FIFTYONE_DATABASE_VALIDATION", "HF_HUB_DISABLE_PROGRESS_BARS", "FIFTYONE_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FIFTYONE_SHOW_PROGRESS_BARS", "true")  # the user's own choice wins
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", fo.config.database_uri)
    configure_environment(build_parser().parse_args(["info", "--database-uri", fo.config.database_uri]))
    import os

    assert os.environ["FIFTYONE_DATABASE_VALIDATION"] == "false"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # pytest's output is not a terminal
    assert os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] == "true"
    assert "FIFTYONE_LOGGING_LEVEL" not in os.environ  # only --json silences the info logs


def test_a_message_from_the_trainer_is_a_cli_error_too(capsys):
    assert main(["train"]) == 2
    assert_one_line_error(capsys, "train", "--config", "--tiny")
