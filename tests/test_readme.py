"""The README's front page works as written: every command in it runs, here or in `.ci/run` (set-up and test)."""

import re
import shlex

import fiftyone as fo

from sam_veteran.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def block(name: str) -> str:
    """The text between ``<!-- name -->`` and ``<!-- /name -->``, without the code fence (as `.ci/run` reads it)."""
    body = re.search(rf"<!-- {name} -->\n```\w*\n(.*?)```\n<!-- /{name} -->", README, re.DOTALL)
    assert body, f"README.md lacks its {name} block"
    return body.group(1)


def front_page_commands() -> list[str]:
    """The `sam-veteran ...` lines of the README's bash blocks outside the set-up and test blocks."""
    outside = README.replace(block("setup"), "").replace(block("test"), "")
    lines = [line.split("#")[0].strip() for code in re.findall(r"```bash\n(.*?)```", outside, re.DOTALL)
             for line in code.splitlines()]
    return [line for line in lines if line]


def test_the_front_page_is_short_and_keeps_the_ci_blocks():
    assert len(README) < 8000
    assert "sam-veteran demo --no-app" in block("setup") and "pytest" in block("test")


def test_every_front_page_command_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fo.config, "plugins_dir", str(tmp_path / "plugins"))
    commands = front_page_commands()
    assert commands and all(line.startswith("sam-veteran ") for line in commands)
    for line in commands:
        if line == "sam-veteran demo":
            assert ".venv/bin/sam-veteran demo --no-app" in block("setup")  # .ci/run runs it
            continue
        assert main(shlex.split(line)[1:]) == 0, line
    assert (tmp_path / "plugins" / "sam-veteran").resolve() == REPO.resolve()


def test_the_sdk_in_ten_lines_runs(tmp_path, tiny_models):
    from sam_veteran.plugin.demo import build_demo_dataset

    code = block("sdk")
    assert len(code.strip().splitlines()) <= 10
    tiny = {'"Qwen/Qwen2.5-VL-7B-Instruct"': repr(str(tiny_models["policy-qwen2_5_vl"])),
            'segmenter="vit_h")': f'segmenter={str(tiny_models["segmenter"])!r}, max_steps=1, max_new_tokens=16)'}
    for real, local in tiny.items():  # the real models, swapped for the tiny ones: no download in a test
        assert code.count(real) == 1
        code = code.replace(real, local)
    build_demo_dataset(tmp_path / "scenes", num_samples=2)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    dataset = namespace["dataset"]
    assert dataset.count("veteran_mask") == 2 and dataset.list_evaluations() == ["eval"]
    assert namespace["results"].metrics()["count"] == 2
