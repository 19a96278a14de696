"""The GPU script's `--trainer` path runs the project's own `train()` (its CPU dry path: a tiny architecture)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "train_step.py"


@pytest.mark.slow
def test_trainer_dry_run_reports_the_step_split(tmp_path):
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (result,) = bench.main(["--trainer", "--dry-run", "--mode", "lora", "--steps", "1", "--work-dir",
                            str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert result["runner"] == "sam_veteran.trainer.train" and result["global_step"] == 1
    (step,) = result["steps"]
    assert step["step_time"] > 0 and step["generation"] > 0 and step["rewards"] >= 0  # rewards: ms on tiny models
    assert step["generation"] + step["rewards"] <= step["step_time"] + 0.01
    assert step["logps_loss_backward_optimiser"] > 0
    assert (tmp_path / "lora" / "run" / "final" / "config.json").exists()
