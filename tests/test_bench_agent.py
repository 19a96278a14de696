"""The benchmarks' own code paths: the GPU agent benchmark's CPU dry run, and the evaluation benchmark's baselines
computing what the project's metric computes."""

from bench_scripts import BENCH, load


def test_gpu_agent_dry_run(tmp_path):
    bench = load(BENCH / "gpu" / "agent.py", "gpu_agent_bench")
    summary = bench.main(["--dry-run", "--out", str(tmp_path / "out.json")])
    assert [run["batch_size"] for run in summary["runs"]] == [1, 2]
    for run in summary["runs"]:
        assert run["masks_per_sample"] == 2.0  # box, click, stop: two SAM decodes per sample
        assert run["agent_samples_per_s"] > 0 and run["generate_samples_per_s"] > 0
        parts = run["agent_seconds_by_part"]
        assert set(parts) == {"generate", "processor", "sam_encode", "sam_segment", "other"}
        assert parts["generate"] > 0 and abs(sum(parts.values()) - run["agent_seconds"]) < 0.01
    assert (tmp_path / "out.json").exists()


def test_evaluation_baselines_agree_with_the_project_metric():
    bench = load(BENCH / "evaluation.py", "evaluation_bench")
    from sam_veteran.plugin.metrics import score_item, summarize

    pairs = bench.items(0, bench.shapes(8))[:40]
    project = [score_item(p, g) for p, g in pairs]
    loop = [bench.loop_item(p, g) for p, g in pairs]
    assert [(s.intersection, s.union) for s in project] == loop == bench.stacked_counts(pairs)
    assert summarize(project) == bench.loop_summary(loop)
    assert any((g == 255).any() for _, g in pairs)  # the ignore band is exercised
