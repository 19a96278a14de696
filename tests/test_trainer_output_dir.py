"""What a run does with its output folder and the model before training: another run's folder is refused unless
resumed or overwritten, and the vision tower can be frozen."""

import pytest
from accelerate import PartialState

from sam_veteran.trainer.config import TrainConfig
from sam_veteran.trainer.train import freeze_vision_tower, prepare_output_dir


def earlier_run(folder):
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("{}\n")
    (folder / "config.yaml").write_text("tiny: true\n")
    (folder / "tiny-scenes").mkdir()
    return folder


def test_a_folder_with_another_run_is_refused(tmp_path):
    folder = earlier_run(tmp_path / "run")
    with pytest.raises(FileExistsError, match=r"holds another run \(checkpoint-2, config.yaml, metrics.jsonl\)"):
        prepare_output_dir(TrainConfig(output_dir=str(folder)), PartialState())
    assert (folder / "checkpoint-2").is_dir()


def test_resuming_keeps_the_run_and_overwriting_removes_it(tmp_path):
    folder = earlier_run(tmp_path / "run")
    prepare_output_dir(TrainConfig(output_dir=str(folder), resume_from_checkpoint="latest"), PartialState())
    assert (folder / "checkpoint-2").is_dir() and (folder / "metrics.jsonl").exists()
    prepare_output_dir(TrainConfig(output_dir=str(folder), overwrite_output_dir=True), PartialState())
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-scenes"]  # generated data stays
    assert prepare_output_dir(TrainConfig(output_dir=str(tmp_path / "new")), PartialState()).is_dir()


def test_freezing_the_vision_tower_keeps_its_merger_and_the_language_model_trainable(tiny_models):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["policy-qwen2_5_vl"])
    assert freeze_vision_tower(model) > 0
    for name, parameter in model.named_parameters():
        frozen_expected = ".visual." in f".{name}" and ".merger." not in name
        assert parameter.requires_grad != frozen_expected, name
    assert any(".merger." in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="no parameter under a 'visual' module"):
        freeze_vision_tower(model.lm_head)
