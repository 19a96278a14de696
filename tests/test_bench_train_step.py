"""The GPU training-step benchmark runs its CPU dry path (a tiny architecture through the same code)."""

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "train_step.py"


def test_train_step_dry_run(tmp_path):
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--dry-run", "--out", str(tmp_path / "out.json")])
    assert [r["mode"] for r in results] == ["lora", "full"]
    lora, full = results
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"] == full["parameters"]
    for result in results:
        assert math.isfinite(result["loss"]) and result["seconds"]["step_total"] > 0
        assert result["prompt_tokens"] > 64  # the image's tokens plus the grounding prompt
    assert (tmp_path / "out.json").exists()


def test_full_size_architecture_is_qwen2_5_vl_7b():
    import torch

    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = bench.build_config(bench.build_processor(840), tiny=False)
    model = bench.build_model(config, "meta", torch.bfloat16)  # shapes only, no memory
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 8.29
