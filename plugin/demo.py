"""`sam-veteran demo`: a small dataset of generated scenes, the agent and the simulated user run on it, the
metrics, the App.

The scenes are the scene world's test split (`scenes.py`: occlusion, distractors, four query kinds, held-out
colour/shape pairs), each with its exact ground-truth mask, so the demo needs no download beyond the models, and
none at all with ``--tiny``. Beside the agent, the simulated user (``policy="oracle"``: the ground truth's box,
then the interactive-segmentation protocol's clicks) runs with the same segmenter under ``oracle``, evaluated
as ``oracle``, so the evaluation panel compares the two.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .defaults import DEFAULT_EVAL_KEY, DEFAULT_LABEL_FIELD, DEFAULT_PROMPT_FIELD
from .labels import AgentFields
from .scenes import make_scenes

DEMO_DATASET = "sam-veteran-demo"
ORACLE_FIELD = "oracle"  # the simulated user's labels and evaluation key, beside the agent's
SCENES_PER_SEED = 100_000  # scene indices of one demo seed: seed 0 draws test scenes 0, 1, 2, ...


def build_demo_dataset(directory: str | Path, num_samples: int = 8, name: str | None = DEMO_DATASET, seed: int = 0,
                       persistent: bool = True, split: str = "test"):
    """Write scenes of `split` (the demo's: ``test``; training draws ``train``) as PNG files under `directory` and
    load them into a FiftyOne dataset (replacing `name`; ``None``: a new generated name).

    Persistent by default, so the demo's dataset is still there to open in the App (`fo.load_dataset(name)`)
    afterwards; a run that only needs it while it lasts (a tiny training run) passes ``persistent=False``, and
    FiftyOne deletes it when no process uses it any more.
    """
    import fiftyone as fo

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name is not None and fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=persistent)
    samples = []
    for i, scene in enumerate(make_scenes(split, num_samples, start=seed * SCENES_PER_SEED)):
        path = directory / f"scene_{i:03d}.png"
        Image.fromarray(scene.image).save(path)
        samples.append(fo.Sample(filepath=str(path), query=scene.query, ground_truth=fo.Segmentation(mask=scene.mask),
                                 query_kind=scene.kind, held_out=scene.held_out, tags=[split]))
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset


def run_demo(policy: str, segmenter: str, directory: str | Path, num_samples: int = 8,
             max_steps: int | None = None, batch_size: int = 4, device: str | None = None,
             name: str = DEMO_DATASET, **policy_kwargs) -> tuple[object, dict]:
    """Build the dataset, run the agent on it, evaluate it (LISA's protocol, evaluation key ``eval``, the one the
    evaluation panel opens); returns (dataset, summary).

    The models load first and the run goes into a new dataset that replaces `name` only once it has succeeded:
    a failed run (no network, a wrong checkpoint) leaves the previous demo as it was.
    """
    import fiftyone as fo

    from .agent import Agent, AgentConfig, OraclePolicy
    from .evaluation import evaluate
    from .model import SamVeteranModel

    started = time.perf_counter()
    model = SamVeteranModel(policy=policy, segmenter=segmenter, max_steps=max_steps, device=device, **policy_kwargs)
    loaded = time.perf_counter()
    dataset = build_demo_dataset(directory, num_samples, name=None, persistent=False)
    try:
        dataset.apply_model(model, label_field=DEFAULT_LABEL_FIELD, prompt_field=DEFAULT_PROMPT_FIELD,
                            batch_size=batch_size)
        ran = time.perf_counter()
        results = evaluate(dataset, DEFAULT_LABEL_FIELD, eval_key=DEFAULT_EVAL_KEY)
        oracle = SamVeteranModel(agent=Agent(OraclePolicy(), model.agent.segmenter,
                                             AgentConfig(max_steps=model.agent.max_steps)))
        dataset.apply_model(oracle, label_field=ORACLE_FIELD, prompt_field=DEFAULT_PROMPT_FIELD, batch_size=batch_size)
        oracle_results = evaluate(dataset, ORACLE_FIELD, eval_key=ORACLE_FIELD)
    except BaseException:
        dataset.delete()
        raise
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset.name, dataset.persistent = name, True
    reasons = Counter(r or "no_result" for r in dataset.values(AgentFields(DEFAULT_LABEL_FIELD).end_reason))
    summary = {
        "dataset": dataset.name, "samples": len(dataset), "policy": str(policy), "segmenter": str(segmenter),
        **{k: v for k, v in results.metrics().items() if k != "count"},
        "end_reasons": dict(reasons), "mean_masks_per_sample": float(np.mean(results.num_steps or [0])),
        "eval_key": DEFAULT_EVAL_KEY, "step_curve": results.step_curve(), "stop_rates": results.stop_rates(),
        "simulated_user": {**{k: v for k, v in oracle_results.metrics().items() if k != "count"},
                           "eval_key": ORACLE_FIELD, "noc": oracle_results.noc(),
                           "step_curve": oracle_results.step_curve()},
        "seconds": {"load": round(loaded - started, 2), "agent": round(ran - loaded, 2),
                    "total": round(time.perf_counter() - started, 2)},
    }
    return dataset, summary
