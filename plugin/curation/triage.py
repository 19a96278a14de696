"""Triage without ground truth: rank the samples of an agent run for human review.

For a label field ``veteran`` (see `labels.py`) each sample gets, under the key ``veteran_triage``:

- ``veteran_triage_confidence``: the segmenter's predicted IoU for the final mask (None without a mask);
- ``veteran_triage_step_change``: the largest change between consecutive step masks, ``1 - IoU``;
- ``veteran_triage_disagreement``: ``1 - IoU`` between this run's final mask and another run's (with `compare_field`);
- ``veteran_triage_reasons``: the flags that fired (`REASONS`);
- ``veteran_triage_score``: the review score in [0, 1], higher = review first.

The score is a weighted mean of five risks, each in [0, 1]::

    score = sum(w[r] * risk[r]) / sum(w[r])      over the risks r that apply
    failure       1 if the trace ended in a parse failure or on invalid input, else 0
    step_cap      1 if the agent hit the step cap instead of stopping, else 0
    confidence    1 - confidence, clipped to [0, 1]; 1 without a mask
    step_change   1 - (lowest IoU between consecutive step masks); 0 with a single step
    disagreement  1 - IoU(final mask, other run's mask); only with `compare_field`

with `DEFAULT_WEIGHTS` (a failure counts double: its mask is whatever was left when the answers stopped making
sense). IoUs follow LISA: two empty masks agree (IoU 1), a missing mask is an empty one. Samples the agent never
ran on get no score and the reason ``not_run``. A sample whose mask file cannot be read (any decoder error) gets
the reason ``unreadable_mask`` and score 1, and the file is logged: it needs a look more than any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import fiftyone.core.fields as fof
import numpy as np

from ..agent.images import decoder_message
from ..agent.trace import EndReason
from ..defaults import DEFAULT_LABEL_FIELD
from ..labels import FAILURES, AgentFields, placed_crop
from ..metrics import mask_iou

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"failure": 2.0, "step_cap": 1.0, "confidence": 1.0, "step_change": 1.0, "disagreement": 1.0}
CHUNK = 128  # samples whose masks are in memory at once
RUN_REASONS = (*FAILURES, EndReason.STEP_CAP)  # the end reasons that are review reasons too
REASONS = ("not_run", "unreadable_mask", *(r.value for r in RUN_REASONS), "low_confidence", "large_change",
           "disagreement")


class MaskReadError(ValueError):
    """A label's mask file cannot be read."""


@dataclass(frozen=True)
class Thresholds:
    """When a reason is listed: confidence below `low_confidence`, a step change or a disagreement above theirs."""

    low_confidence: float = 0.5
    large_change: float = 0.5
    disagreement: float = 0.5


def triage(samples, label_field: str = DEFAULT_LABEL_FIELD, compare_field: str | None = None, key: str | None = None,
           weights: dict[str, float] | None = None, thresholds: Thresholds = Thresholds()) -> dict:
    """Write the triage fields of `label_field` on `samples` (any collection) and return a summary.

    `compare_field` is a second agent run (its label field, e.g. ``veteran_sam2``) or any `fo.Segmentation` field.
    Reads in chunks of `CHUNK` samples and writes each field with one ``set_values``. Returns ``{"key", "count",
    "scored", "reasons"}``, ``reasons`` counting the samples per reason.
    """
    key = key or f"{label_field}_triage"
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    run = AgentFields(label_field)
    mask_field = run.mask
    if not samples.has_field(mask_field):
        raise ValueError(f"no field {mask_field!r}: run the agent with label_field={label_field!r} first")
    steps_field = f"{run.steps}.detections" if samples.has_field(run.steps) else None
    other_field = _segmentation_field(samples, compare_field) if compare_field else None
    ids = samples.values("id")
    rows = []
    for start in range(0, len(ids), CHUNK):
        chunk = samples.select(ids[start:start + CHUNK], ordered=True)
        masks = chunk.values(mask_field)
        steps = chunk.values(steps_field) if steps_field else [None] * len(masks)
        others = chunk.values(other_field) if other_field else [None] * len(masks)
        for sample_id, mask, detections, other in zip(ids[start:start + CHUNK], masks, steps, others):
            try:
                rows.append(_triage_one(mask, detections, other, other_field is not None, weights, thresholds))
            except MaskReadError as exc:
                logger.warning("sample %s: %s", sample_id, exc)
                rows.append({"confidence": None, "step_change": None, "disagreement": None,
                             "reasons": ["unreadable_mask"], "score": 1.0})
            except ValueError as exc:
                raise ValueError(f"sample {sample_id}: {exc}") from None
    names = ["confidence", "step_change"] + (["disagreement"] if compare_field else []) + ["reasons", "score"]
    for name in names:
        field = f"{key}_{name}"
        if name == "reasons":
            _declare_field(samples, field, fof.ListField, subfield=fof.StringField)
        else:
            _declare_field(samples, field, fof.FloatField)
        samples.set_values(field, [row[name] for row in rows])
    counts = {reason: sum(reason in row["reasons"] for row in rows) for reason in REASONS}
    return {"key": key, "count": len(rows), "scored": sum(row["score"] is not None for row in rows),
            "reasons": {reason: n for reason, n in counts.items() if n}}


def review_order(samples, label_field: str = DEFAULT_LABEL_FIELD, key: str | None = None):
    """`samples` sorted by the triage score, the samples to review first at the top."""
    return samples.sort_by(f"{key or label_field + '_triage'}_score", reverse=True)


def step_masks(detections, width: int, height: int) -> list[np.ndarray]:
    """Full-size boolean masks of an agent run's steps, in step order: each detection mask pasted at its box."""
    out = []
    for detection in sorted(detections or [], key=_step):
        full = np.zeros((height, width), dtype=bool)
        if detection.mask is not None:
            crop, x, y = placed_crop(detection.mask, detection.bounding_box, width, height)
            full[y:y + crop.shape[0], x:x + crop.shape[1]] = crop.astype(bool)
        out.append(full)
    return out


def _declare_field(samples, field: str, ftype, **kwargs) -> None:
    """Create `field` on the dataset behind `samples` unless it exists, so all-None values can be written."""
    if not samples.has_field(field):
        samples._dataset.add_sample_field(field, ftype, **kwargs)


def _binary(label) -> np.ndarray | None:
    """A Segmentation label's mask as a boolean image (nonzero = object; any channel for RGB masks), or None."""
    if label is None or not label.has_mask:
        return None
    try:
        mask = label.get_mask()
    except Exception as exc:  # any decoder error fails this sample's triage alone
        raise MaskReadError(f"cannot read mask {label.mask_path}: {decoder_message(exc)}") from None
    return mask.any(axis=2) if mask.ndim == 3 else mask.astype(bool)


def _step(detection) -> int:
    return detection.get_field("step") if detection.has_field("step") else 0


def _segmentation_field(samples, field: str) -> str:
    """The Segmentation field of a comparison run: ``<field>_mask`` for an agent label field, else `field` itself."""
    for candidate in (AgentFields(field).mask, field):
        if samples.has_field(candidate):
            return candidate
    raise ValueError(f"no field {field!r} or {AgentFields(field).mask!r} to compare with")


def _triage_one(mask_label, detections, other_label, compare: bool, weights: dict, thresholds: Thresholds) -> dict:
    if mask_label is None:
        return {"confidence": None, "step_change": None, "disagreement": None, "reasons": ["not_run"],
                "score": None}
    final = _binary(mask_label)
    end_reason = mask_label["end_reason"] if mask_label.has_field("end_reason") else None
    reasons = [end_reason] if end_reason in RUN_REASONS else []
    risks = {"failure": float(end_reason in FAILURES), "step_cap": float(end_reason == EndReason.STEP_CAP)}

    confidences = [d.confidence for d in sorted(detections or [], key=_step)]
    confidence = confidences[-1] if confidences and final is not None else None
    risks["confidence"] = 1.0 if confidence is None else float(np.clip(1.0 - confidence, 0.0, 1.0))
    if confidence is None or confidence < thresholds.low_confidence:
        reasons.append("low_confidence")

    step_change = 0.0
    if final is not None:
        height, width = final.shape[:2]
        masks = step_masks(detections, width, height)
        step_change = max((1.0 - mask_iou(a, b) for a, b in zip(masks, masks[1:])), default=0.0)
    risks["step_change"] = step_change
    if step_change > thresholds.large_change:
        reasons.append("large_change")

    disagreement = None
    if compare:
        other = _binary(other_label)
        disagreement = 1.0 - mask_iou(final, other)
        risks["disagreement"] = disagreement
        if disagreement > thresholds.disagreement:
            reasons.append("disagreement")

    score = sum(weights[name] * risk for name, risk in risks.items()) / sum(weights[name] for name in risks)
    return {"confidence": confidence, "step_change": step_change, "disagreement": disagreement, "reasons": reasons,
            "score": score}
