"""Sample tags from an evaluation (`sam_veteran.evaluate`): IoU band, stopping too early or too late, query type.

For an evaluation ``eval`` the tags are:

- ``eval:iou 0.50-0.75`` ... one per band of `bands.IOU_BAND_EDGES`, from ``eval_iou`` (the panel's band filters
  use the same edges, so a tag and a filter select the same samples);
- ``eval:stopped too late``: the agent went on past its best mask, ``max(step IoUs) - IoU after the last step``
  exceeding `margin`; read from ``eval_step_ious``;
- ``eval:stopped too early``: the agent stopped by itself while its last mask was still below `good_enough` (0.9,
  where the method's "needs refinement" ends) and no earlier step had been better by more than `margin`;
- ``query:sentence`` / ``query:phrase`` from ``is_sentence``.

Re-tagging first removes the tags an earlier call wrote for the same evaluation, so tags follow the latest run.
"""

from __future__ import annotations

import math

from ..labels import AgentFields
from .bands import IOU_BAND_EDGES, band_index, band_label

QUERY_TAGS = {True: "query:sentence", False: "query:phrase"}
TOO_LATE, TOO_EARLY = "stopped too late", "stopped too early"


def band_tag(eval_key: str, index: int) -> str:
    return f"{eval_key}:{band_label(index)}"


def evaluation_tags(eval_key: str) -> list[str]:
    """Every tag `tag_from_evaluation` may write for `eval_key`."""
    return [band_tag(eval_key, i) for i in range(len(IOU_BAND_EDGES) - 1)] + \
        [f"{eval_key}:{TOO_LATE}", f"{eval_key}:{TOO_EARLY}"] + list(QUERY_TAGS.values())


def stopping_verdict(step_ious: list[float] | None, stopped_by_agent: bool, margin: float = 0.05,
                     good_enough: float = 0.9) -> str | None:
    """``stopped too late``, ``stopped too early`` or None, from the IoUs after each step."""
    ious = [v for v in step_ious or [] if v is not None and not math.isnan(v)]
    if not ious:
        return None
    if max(ious) - ious[-1] > margin:
        return TOO_LATE
    if stopped_by_agent and ious[-1] < good_enough:
        return TOO_EARLY
    return None


def tag_from_evaluation(samples, eval_key: str = "eval", margin: float = 0.05, good_enough: float = 0.9) -> dict:
    """Tag `samples` from the evaluation `eval_key` (see the module docstring) and return the count per tag."""
    dataset = samples._root_dataset
    if eval_key not in dataset.list_evaluations():
        raise ValueError(f"no evaluation {eval_key!r} on {dataset.name!r}; run sam_veteran.evaluate first")
    config = dataset.get_evaluation_info(eval_key).config
    ious = samples.values(f"{eval_key}_iou")
    n = len(ious)
    has_steps = getattr(config, "steps_field", None) is not None  # an agent result: per-step IoUs exist
    step_ious = samples.values(f"{eval_key}_step_ious") if has_steps else [None] * n
    stopped = samples.values(AgentFields.of(config.mask_field).stopped_by_agent) if has_steps else [False] * n
    is_sentence = samples.values("is_sentence") if samples.has_field("is_sentence") else [None] * n

    ours = set(evaluation_tags(eval_key))
    new_tags, counts = [], {}
    for tags, iou, steps, by_agent, sentence in zip(samples.values("tags"), ious, step_ious, stopped, is_sentence):
        added = []
        band = band_index(iou)
        if band is not None:
            added.append(band_tag(eval_key, band))
        verdict = stopping_verdict(steps, bool(by_agent), margin, good_enough)
        if verdict:
            added.append(f"{eval_key}:{verdict}")
        if sentence in QUERY_TAGS:
            added.append(QUERY_TAGS[sentence])
        for tag in added:
            counts[tag] = counts.get(tag, 0) + 1
        new_tags.append([t for t in tags or [] if t not in ours] + added)
    samples.set_values("tags", new_tags)
    return dict(sorted(counts.items()))
