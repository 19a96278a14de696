"""One worker of a sharded run in a process of its own, for the tests that run several at once or kill one.

    python shard_worker.py launch READY COUNT DELAY PAUSE_AT MARKER ARG...
        `python -m sam_veteran.run ARG...` (the rank comes from the environment, as torchrun or srun set it), once
        COUNT workers have written their file into the folder READY (so that none finishes the run before the others
        have started), each request to the simulated user delayed by DELAY seconds (standing in for a model that
        takes time). With PAUSE_AT n > 0 the worker stops for good before its n-th batch write, once MARKER is
        written: the test kills it there.
    python shard_worker.py delegated READY COUNT DELAY DATASET OPERATOR_URI POLICY
        the loop of `fiftyone delegated launch` (one queued operation at a time), for that operator on that dataset,
        until this process has executed one shard operation; prints its shard. DELAY as above, for the
        Transformers policy, which is loaded once before the start (the imports of its first load take seconds
        here, in which the other worker would finish the run).
"""

import os
import sys
import time
from pathlib import Path


def barrier(ready: str, count: int) -> None:
    folder = Path(ready)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(list(folder.iterdir()))} of {count} workers started")
        time.sleep(0.05)


def delayed(policy_class, delay: float):
    """`policy_class.generate`, each call `delay` seconds longer."""
    generate = policy_class.generate

    def slow(self, requests, sample=False):
        time.sleep(delay)
        return generate(self, requests, sample)

    return slow


def launch(ready: str, count: int, delay: float, pause_at: int, marker: str, *args: str) -> int:
    from sam_veteran.plugin import inference
    from sam_veteran.plugin.agent.oracle import OraclePolicy
    from sam_veteran.run import run_main

    OraclePolicy.generate = delayed(OraclePolicy, delay)
    write, writes = inference._write, []

    def paused(*call_args):
        writes.append(1)
        if len(writes) == pause_at:
            Path(marker).write_text("here")
            while True:
                time.sleep(1)
        return write(*call_args)

    inference._write = paused
    barrier(ready, count)
    return run_main(list(args))


def execute_one_shard(ready: str, count: int, name: str, operator: str) -> str:
    """Execute queued operations of `operator` on dataset `name`, one at a time, until one was a shard of a run;
    returns its shard ("I/N")."""
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    barrier(ready, count)
    while True:
        for result in service.execute_queued_operations(operator=operator, dataset_name=name, limit=1):
            if result is not None and isinstance(result.result, dict) and "shard" in result.result:
                return result.result["shard"]
        time.sleep(0.2)


def delegated(ready: str, count: int, delay: float, name: str, operator: str, policy: str) -> None:
    from sam_veteran.plugin.agent.policy import TransformersPolicy

    TransformersPolicy.from_pretrained(policy, device="cpu")
    TransformersPolicy.generate = delayed(TransformersPolicy, delay)
    print(execute_one_shard(ready, count, name, operator))


if __name__ == "__main__":
    command, ready, count, *rest = sys.argv[1:]
    if command == "launch":
        delay, pause_at, marker, *args = rest
        sys.exit(launch(ready, int(count), float(delay), int(pause_at), marker, *args))
    delay, name, operator, policy = rest
    delegated(ready, int(count), float(delay), name, operator, policy)
