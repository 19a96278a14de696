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
