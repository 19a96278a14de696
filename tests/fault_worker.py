"""A run of the agent in a process of its own, for the tests that kill runs or run two at once.

    python fault_worker.py run DATASET LABEL_FIELD SEGMENTER SECONDS_PER_ANSWER BATCH_SIZE
        `run_agent` with the scripted policy of agent_data, each answer delayed so that a test can kill the run
        part-way; prints the summary as JSON.
    python fault_worker.py delegated DATASET OPERATOR_URI
        executes the queued delegated operations of that operator on the dataset, as `fiftyone delegated launch`
        would.
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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "run":
        run(args[0], args[1], args[2], float(args[3]), int(args[4]))
    else:
        delegated(*args)
