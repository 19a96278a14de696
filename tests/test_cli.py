import json
import os
import subprocess
import sys

from sam_veteran.cli import main


def test_tiny_models_command_writes_loadable_models(tmp_path, capsys):
    from sam_veteran.plugin.agent import SamSegmenter, TransformersPolicy

    assert main(["tiny-models", str(tmp_path), "--family", "qwen3_vl"]) == 0
    assert "policy-qwen3_vl" in capsys.readouterr().out
    policy = TransformersPolicy.from_pretrained(tmp_path / "policy-qwen3_vl", device="cpu")
    assert policy.family.coordinates == "normalized_1000"
    SamSegmenter.from_checkpoint(tmp_path / "sam_tiny.safetensors", device="cpu")


def test_demo_tiny_json_runs_offline_end_to_end(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAM_VETERAN_CACHE=str(tmp_path / "cache"),
               FIFTYONE_DATABASE_DIR=str(tmp_path / "db"))
    result = subprocess.run([sys.executable, "-m", "sam_veteran.cli", "demo", "--tiny", "--json", "--samples", "6"],
                            capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # stdout holds the JSON line alone
    assert summary["samples"] == 6
    assert 0.0 <= summary["gIoU"] <= 1.0 and 0.0 <= summary["cIoU"] <= 1.0
    assert sum(summary["end_reasons"].values()) == 6
    assert "it/s" not in result.stderr  # no progress bars (FiftyOne's, transformers') when output is not a terminal
