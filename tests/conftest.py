"""Shared fixtures. FiftyOne is isolated per test session before anything imports it.

The session gets a mongod of its own through `FIFTYONE_DATABASE_URI`: FiftyOne's database service otherwise attaches
to any service already running on the machine, whatever `FIFTYONE_DATABASE_DIR` says, and concurrent sessions would
share (and clean up) each other's datasets. Subprocesses started by tests inherit the URI, so they share this one.
"""

import atexit
import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sam-veteran-tests-"))


def _start_private_mongod(directory: Path) -> str:
    """Start FiftyOne's bundled mongod on a free local port; it is stopped when the test session exits."""
    fiftyone_dir = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [str(fiftyone_dir / "db" / "bin" / "mongod"), "--dbpath", str(directory), "--port", str(port),
         "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", str(directory / "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(lambda: (process.terminate(), process.wait(timeout=30)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the test mongod exited with code {process.returncode}; see {directory}")
            time.sleep(0.2)
    raise RuntimeError(f"the test mongod did not listen on port {port} within 60 s")


if "FIFTYONE_DATABASE_URI" not in os.environ:
    os.environ["FIFTYONE_DATABASE_URI"] = _start_private_mongod(_SESSION_DIR / "db")
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_SESSION_DIR / "db"))
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(_SESSION_DIR / "plugins"))
os.environ["SAM_VETERAN_CACHE"] = str(_SESSION_DIR / "cache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Tiny policies (Qwen2.5-VL, Qwen3-VL, Qwen2-VL) and a tiny SAM checkpoint, written once per session."""
    from sam_veteran.plugin.agent.tiny import write_tiny_models

    return write_tiny_models(_SESSION_DIR / "tiny", families=("qwen2_5_vl", "qwen3_vl", "qwen2_vl"))


@pytest.fixture(scope="session")
def installed_plugin() -> Path:
    """The repository linked into FIFTYONE_PLUGINS_DIR, as a user installs it (an App server inherits it)."""
    plugins = Path(os.environ["FIFTYONE_PLUGINS_DIR"])
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "sam-veteran"
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return link


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_models):
    from sam_veteran.plugin.agent import SamSegmenter

    return SamSegmenter.from_checkpoint(tiny_models["segmenter"], device="cpu")


@pytest.fixture(scope="session")
def tiny_policy(tiny_models):
    from sam_veteran.plugin.agent import TransformersPolicy

    return TransformersPolicy.from_pretrained(tiny_models["policy-qwen2_5_vl"], device="cpu", max_new_tokens=24)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """One torch thread, as the benchmarks use: two threads on this shared 2-core machine make small ops many times
    slower (`bench/README.md`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
