"""A run of the agent in a process of its own, for the tests that kill runs or run two at once.

    python fault_worker.py run DATASET LABEL_FIELD SEGMENTER SECONDS_PER_ANSWER BATCH_SIZE
        `run_agent` with the scripted policy of agent_data, each answer delayed so that a test can kill the run
        part-way; prints the summary as JSON.
    python fault_worker.py delegated DATASET OPERATOR_URI
        executes the queued delegated operations of that operator on the dataset, as `fiftyone delegated launch`
        would.
    python fault_worker.py pause MODULE:ATTR NTH before|after MARKER OPERATION ARG...
        runs OPERATION (evaluate DATASET PRED_FIELD EVAL_KEY | import FOLDER NAME | export DATASET FOLDER), stopping
        for good at the NTH call of MODULE:ATTR (before or after it runs) once MARKER is written: the test then
        kills the process at exactly that point.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def run(name: str, label_field: str, segmenter: str, delay: float, batch_size: int) -> None:
    import fiftyone as fo

    from agent_data import box_then_click
    from sam_veteran.plugin.agent import Agent, AgentConfig, SamSegmenter
    from sam_veteran.plugin.inference import run_agent
    from sam_veteran.plugin.model import SamVeteranModel
    from scripted import ScriptedPolicy

    def slow(query, step, sampled):
        time.sleep(delay)
        return box_then_click(query, step, sampled)

    agent = Agent(ScriptedPolicy(slow), SamSegmenter.from_checkpoint(segmenter, device="cpu"),
                  AgentConfig(max_steps=3))
    summary = run_agent(fo.load_dataset(name), SamVeteranModel(agent=agent), label_field=label_field,
                        batch_size=batch_size)
    print(json.dumps(summary))


def delegated(name: str, operator: str) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService

    DelegatedOperationService().execute_queued_operations(operator=operator, dataset_name=name)


def pause(target: str, nth: int, when: str, marker: str, operation: str, *args: str) -> None:
    import importlib

    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = []

    def paused(*call_args, **kwargs):
        calls.append(1)
        if len(calls) == nth and when == "before":
            stop_here(marker)
        result = original(*call_args, **kwargs)
        if len(calls) == nth and when == "after":
            stop_here(marker)
        return result

    setattr(owner, name, paused)
    OPERATIONS[operation](*args)
    raise SystemExit(f"{target} was called {len(calls)} time(s), never the {nth}th")


def stop_here(marker: str) -> None:
    Path(marker).write_text("here")
    while True:
        time.sleep(1)


def evaluate(name: str, pred_field: str, eval_key: str) -> None:
    import fiftyone as fo

    from sam_veteran import evaluate

    evaluate(fo.load_dataset(name), pred_field, eval_key=eval_key)


def import_folder(folder: str, name: str) -> None:
    from sam_veteran import import_reasonseg

    import_reasonseg(folder, name=name, overwrite=True, persistent=True)


def export(name: str, folder: str) -> None:
    import fiftyone as fo

    from sam_veteran.plugin.datasets.exporters import export_reasonseg

    export_reasonseg(fo.load_dataset(name), folder, overwrite=True)


OPERATIONS = {"evaluate": evaluate, "import": import_folder, "export": export}

if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "run":
        run(args[0], args[1], args[2], float(args[3]), int(args[4]))
    elif command == "pause":
        pause(args[0], int(args[1]), *args[2:])
    else:
        delegated(*args)
