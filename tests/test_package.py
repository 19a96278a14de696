"""The package imports lazily: `import sam_veteran` and the agent's pure modules load neither torch nor FiftyOne,
and `dir()` (tab completion) still lists the whole API."""

import subprocess
import sys

import sam_veteran
import sam_veteran.plugin.agent as agent


def test_dir_lists_the_lazy_api():
    assert set(sam_veteran.__all__) <= set(dir(sam_veteran))
    assert {"SamVeteranModel", "run_agent", "evaluate", "register"} <= set(dir(sam_veteran))
    assert {"Agent", "SamSegmenter", "Sam2Segmenter", "load_segmenter", "EndReason"} <= set(dir(agent))


def test_parsing_and_the_rewards_import_without_torch_or_fiftyone():
    code = ("import sys, sam_veteran, sam_veteran.plugin.agent.parsing, sam_veteran.trainer.rewards, "
            "sam_veteran.plugin.agent.segmenters as s; s.segmenter_kind('vit_b'); "
            "print(sorted(m for m in ('torch', 'fiftyone', 'PIL', 'segment_anything') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_every_package_and_the_shipped_models_are_in_the_wheel_list():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"sam_veteran" + ("." + ".".join(p.parent.relative_to(root).parts) if p.parent != root else "")
             for p in root.glob("**/__init__.py")
             if not {".venv", "tests", "bench", ".shim", "build"} & set(p.relative_to(root).parts)}
    assert found <= listed, sorted(found - listed)
    data = config["package-data"]["sam_veteran"]
    assert "plugin/models/mini/*" in data
