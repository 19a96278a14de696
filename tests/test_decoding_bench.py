"""The decoding benchmarks' code paths: the GPU script's CPU dry run (tiny config, eager and the static path)."""

import json

import pytest
from bench_scripts import BENCH, load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gpu_decoding_dry_run(tmp_path):
    bench = load(BENCH / "gpu" / "decoding.py", "gpu_decoding_bench")
    summary = bench.main(["--dry-run", "--batch-sizes", "2", "--out", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["runs"] == summary["runs"]
    assert [(r["decoding"], r["batch_size"]) for r in summary["runs"]] == [("eager", 2), ("static", 2)]
    assert summary["step_weight_bytes"] > 0 and summary["copy_bandwidth_gb_per_s"] > 0
    for run in summary["runs"]:
        assert run["tokens_per_s"] > 0 and 0 < run["roofline_ratio"] < 1
        assert 0 < run["prefill_share"] < 1 and 0 < run["vision_share_of_prefill"] < 1
        agent = run["agent"]
        assert agent["overlap_encode"] and agent["agent_samples_per_s"] > 0
        assert set(agent["agent_seconds_by_part"]) == {"generate", "processor", "sam_encode", "sam_decode",
                                                        "token_decode", "rendering", "other"}
    sequential = summary["runs"][0]["agent_sequential_encode"]
    parts = sequential["agent_seconds_by_part"]
    assert not sequential["overlap_encode"] and abs(sum(parts.values()) - sequential["agent_seconds"]) < 0.01
