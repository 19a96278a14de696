"""Reasoning-segmentation evaluation stored as a FiftyOne evaluation run: gIoU/cIoU, the refinement curve, stop rates.

`evaluate` scores a Segmentation field against a 0/1/255 ground truth under a protocol convention from
`metrics.CONVENTIONS` (LISA's by default), writes ``<eval_key>_iou`` on every sample and registers the run, so
``dataset.list_evaluations()`` lists it and ``dataset.load_evaluation_results(key)`` gives the results back.

For an agent result (``<field>_mask`` with ``<field>_steps``, see `labels.py`) it also scores the mask after every
step (a step's full-size mask is its detection mask pasted at its box) and writes them as ``<eval_key>_step_ious``
(one IoU per mask the agent produced). The refinement curve carries each sample's last mask forward: a sample the
agent stopped at step 1 still counts at steps 2 and 3 with its step-1 mask, so every point of the curve covers
the same samples. A sample with no prediction counts as an empty mask at every step.

A run replaces an earlier one of the same key only once it is complete: names, fields and the view are checked
before anything is registered, every sample is scored before anything is written, and the new run is written under
a staging key (``<eval_key>_sv_staging``) that is swapped into place at the end. Saving the staging run's results
is the commit point: an evaluation killed before it leaves the earlier one intact (the staging run is deleted by
the next `evaluate` of that key), one killed after it is finished by the next `evaluate` of that key.
"""

from __future__ import annotations

from typing import Callable

import fiftyone as fo
import fiftyone.core.evaluation as foe
import numpy as np

from .agent.images import decoder_message
from .agent.trace import Action
from .curation.bands import histogram_edges
from .labels import AgentFields, placed_crop
from .metrics import (DEFAULT_CONVENTION, NOC_THRESHOLDS, get_convention, item_ious, mean_clicks_to_reach, score_crop,
                      score_item, summarize_counts)

RUN_TYPE = "reasoning_segmentation"  # the config type that marks this plugin's runs in list_evaluations
CHUNK = 128  # samples whose masks are in memory at once
HISTOGRAM_BINS = 10
QUERY_TYPES = {True: "sentence", False: "phrase"}
STAGING_SUFFIX = "_sv_staging"  # see `staging_key`; panels and listings can leave such keys out


def evaluate(samples, pred_field: str, gt_field: str = "ground_truth", eval_key: str | None = "eval",
             protocol: str = DEFAULT_CONVENTION, overwrite: bool = True,
             progress: Callable[[float], None] | None = None) -> "ReasonSegResults":
    """Score `pred_field` (a Segmentation field, or an agent label field such as ``veteran``) against `gt_field`.

    `protocol` names a convention of `metrics.CONVENTIONS`. With an `eval_key` the run is stored on the dataset and
    ``<eval_key>_iou`` (and for agent results ``<eval_key>_step_ious``) written on every sample; an existing run
    with that key is replaced when `overwrite`. Nothing is written until every sample has been scored, so a bad
    sample (named in the error) leaves earlier evaluations as they were. `progress` receives fractions done.
    """
    get_convention(protocol)
    mask_field, steps_field = resolve_prediction_fields(samples, pred_field)
    _require_segmentation(samples, gt_field)
    if not samples.count("id"):
        raise ValueError(f"nothing to evaluate: the view of {samples._root_dataset.name!r} is empty")
    config = ReasonSegEvaluationConfig(pred_field, gt_field, protocol=protocol, mask_field=mask_field,
                                       steps_field=steps_field)
    method = config.build()
    if eval_key is not None:
        finish_interrupted(samples._root_dataset, eval_key)
        method.validate_run(samples, eval_key, overwrite=overwrite)
        _check_output_fields(samples, method, eval_key)
    results = method.evaluate_samples(samples, eval_key, progress)
    if eval_key is not None:
        staging = staging_key(eval_key)
        method.register_run(samples, staging, overwrite=False)
        method.write_fields(samples, staging, results)
        method.save_run_results(samples, staging, results)  # the commit point (see the module's docstring)
        _swap(samples._root_dataset, eval_key)
    return results


def staging_key(eval_key: str) -> str:
    """The key a run of `eval_key` is written under until it replaces the earlier one."""
    return f"{eval_key}{STAGING_SUFFIX}"


def finish_interrupted(dataset, eval_key: str) -> None:
    """Complete the swap of a killed evaluation of `eval_key` that had committed, or delete its staging run."""
    staging = staging_key(eval_key)
    if not dataset.has_evaluation(staging):
        return
    if foe.EvaluationMethod._get_run_doc(dataset, staging).results:  # saved results: the run was complete
        _swap(dataset, eval_key)
    else:
        dataset.delete_evaluation(staging)


def _swap(dataset, eval_key: str) -> None:
    """Put the committed staging run in place of `eval_key`; each step can be repeated after a kill."""
    if dataset.has_evaluation(eval_key):
        dataset.delete_evaluation(eval_key)
    dataset.rename_evaluation(staging_key(eval_key), eval_key)


def _check_output_fields(samples, method: "ReasonSegEvaluation", eval_key: str) -> None:
    """Refuse an `eval_key` whose fields (or staging fields) would overwrite fields no run of that key owns."""
    dataset = samples._root_dataset
    owned = set()
    if dataset.has_evaluation(eval_key):
        owned = set(dataset.get_evaluation_info(eval_key).config.build().get_fields(dataset, eval_key))
    for key in (eval_key, staging_key(eval_key)):
        for field in method.get_fields(samples, key):
            if dataset.has_sample_field(field) and field not in owned:
                raise ValueError(f"eval_key {eval_key!r} would write the field {field!r}, which {dataset.name!r} "
                                 "already has and no evaluation of that key wrote; choose another eval_key")


def resolve_prediction_fields(samples, pred_field: str) -> tuple[str, str | None]:
    """(mask field, steps field or None): ``veteran`` and ``veteran_mask`` both name the agent result ``veteran``."""
    schema = samples.get_field_schema()
    if pred_field in schema:
        _require_segmentation(samples, pred_field)
        mask_field = pred_field
    elif AgentFields(pred_field).mask in schema:
        mask_field = AgentFields(pred_field).mask
        _require_segmentation(samples, mask_field)
    else:
        raise ValueError(f"no field {pred_field!r} (nor {AgentFields(pred_field).mask}) on "
                         f"{samples._root_dataset.name!r}")
    run = AgentFields.of(mask_field)
    return mask_field, run.steps if run.mask == mask_field and run.exists_on(samples) else None


def _require_segmentation(samples, field_name: str) -> None:
    field = samples.get_field(field_name)
    if field is None or not issubclass(getattr(field, "document_type", object), fo.Segmentation):
        raise ValueError(f"{field_name!r} is not a Segmentation field of {samples._root_dataset.name!r}")


class ReasonSegEvaluationConfig(foe.EvaluationMethodConfig):
    """What was evaluated and how: the fields, the protocol convention, the agent fields found."""

    def __init__(self, pred_field: str, gt_field: str, protocol: str = DEFAULT_CONVENTION,
                 mask_field: str | None = None, steps_field: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pred_field = pred_field
        self.gt_field = gt_field
        self.protocol = protocol
        self.mask_field = mask_field or pred_field
        self.steps_field = steps_field

    @property
    def type(self) -> str:
        return RUN_TYPE

    @property
    def method(self) -> str:
        return "sam_veteran"


class ReasonSegEvaluation(foe.EvaluationMethod):
    """Scores samples and owns the fields a run writes (FiftyOne calls `cleanup` and `rename` on them)."""

    def get_fields(self, samples, eval_key):
        fields = [f"{eval_key}_iou"]
        if self.config.steps_field:
            fields.append(f"{eval_key}_step_ious")
        return fields

    def cleanup(self, samples, eval_key):
        samples._dataset.delete_sample_fields(self.get_fields(samples, eval_key), error_level=1)

    def rename(self, samples, eval_key, new_eval_key):
        dataset = samples._dataset  # fields already renamed by a rename cut off part-way are left as they are
        names = {old: new for old, new in zip(self.get_fields(samples, eval_key),
                                              self.get_fields(samples, new_eval_key)) if dataset.has_sample_field(old)}
        if names:
            dataset.rename_sample_fields(names)

    def _validate_run(self, samples, eval_key, existing_info):
        self._validate_fields_match(eval_key, "pred_field", existing_info)
        self._validate_fields_match(eval_key, "gt_field", existing_info)

    def evaluate_samples(self, samples, eval_key=None, progress=None) -> "ReasonSegResults":
        config = self.config
        convention = get_convention(config.protocol)
        ids = samples.values("id")
        is_sentence = samples.values("is_sentence") if samples.has_field("is_sentence") else [None] * len(ids)
        scores, step_scores, step_clicks, stopped = [], [], [], []
        for start in range(0, len(ids), CHUNK):
            chunk = samples.select(ids[start:start + CHUNK], ordered=True)
            for row in zip(*_read_chunk(chunk, config)):
                sample_id, ground_truth, prediction, steps, by_agent = row
                prediction = _check_prediction(prediction, ground_truth, sample_id, config.mask_field)
                scores.append(score_item(prediction, ground_truth, convention))
                step_scores.append(_score_steps(steps, ground_truth, convention, sample_id, config.steps_field))
                step_clicks.append(_clicks_so_far(steps))
                stopped.append(bool(by_agent))
            if progress is not None:
                progress(min(start + CHUNK, len(ids)) / max(len(ids), 1))
        return ReasonSegResults(
            samples, config, eval_key, ids=ids,
            intersections=[s.intersection for s in scores], unions=[s.union for s in scores],
            missing=[s.missing for s in scores],
            step_intersections=[[s.intersection for s in row] for row in step_scores],
            step_unions=[[s.union for s in row] for row in step_scores],
            stopped_by_agent=stopped, is_sentence=is_sentence, step_clicks=step_clicks, backend=self)

    def write_fields(self, samples, eval_key: str, results: "ReasonSegResults") -> None:
        """``<eval_key>_iou`` (None where the convention leaves the item out) and the per-step IoUs (NaN there: a
        list field holds no None)."""
        samples.set_values(f"{eval_key}_iou", [None if np.isnan(v) else float(v) for v in results.ious])
        if self.config.steps_field:
            samples.set_values(f"{eval_key}_step_ious", [row.tolist() for row in results.step_ious])


def _read_chunk(chunk, config):
    """Per sample: id, ground-truth mask, prediction mask (None if missing), step masks with their boxes and step
    numbers, stopped by the agent. Read as raw values (no label objects are built), one query per chunk."""
    gt, pred, steps = config.gt_field, config.mask_field, config.steps_field
    paths = ["id", f"{gt}.mask", f"{gt}.mask_path", f"{pred}.mask", f"{pred}.mask_path"]
    if steps:
        paths += [f"{steps}.detections.mask", f"{steps}.detections.bounding_box", f"{steps}.detections.step",
                  AgentFields.of(pred).stopped_by_agent, f"{steps}.detections.action"]
    columns = chunk.values(paths)
    ids = columns[0]
    ground_truths = []
    for sample_id, mask, mask_path in zip(ids, columns[1], columns[2]):
        ground_truth = _mask(mask, mask_path, sample_id)
        if ground_truth is None:
            raise ValueError(f"sample {sample_id} has no {gt} mask")
        if ground_truth.ndim != 2:
            raise ValueError(f"sample {sample_id}: the {gt} mask has shape {ground_truth.shape}; a ground truth is a "
                             "2-D label mask (0 background, 1 target, 255 ignore), not an RGB image")
        ground_truths.append(ground_truth)
    predictions = [_mask(m, p, i) for i, m, p in zip(ids, columns[3], columns[4])]
    if not steps:
        return ids, ground_truths, predictions, [None] * len(ids), [False] * len(ids)
    step_rows = [list(zip(masks or [], boxes or [], numbers or [], actions or [])) for masks, boxes, numbers, actions
                 in zip(columns[5], columns[6], columns[7], columns[9])]
    return ids, ground_truths, predictions, step_rows, columns[8]


def _mask(mask, mask_path, sample_id: str) -> np.ndarray | None:
    if mask is None and mask_path:
        try:
            mask = fo.Segmentation(mask_path=mask_path).get_mask()
        except Exception as exc:  # any decoder error: the evaluation stops naming the sample and the file
            raise ValueError(f"sample {sample_id}: cannot read mask {mask_path}: {decoder_message(exc)}") from None
    return mask


def _check_prediction(mask, ground_truth: np.ndarray, sample_id: str, field: str) -> np.ndarray | None:
    if mask is None:
        return None
    if mask.shape[:2] != ground_truth.shape:
        raise ValueError(f"sample {sample_id}: {field} mask is {mask.shape[1]}x{mask.shape[0]}, the ground truth "
                         f"{ground_truth.shape[1]}x{ground_truth.shape[0]}")
    return mask if mask.ndim == 2 else mask.any(axis=2)


CLICKS_PER_ACTION = {Action.POSITIVE.value: 1, Action.NEGATIVE.value: 1, Action.POSITIVE_AND_NEGATIVE.value: 2}


def _clicks_so_far(steps) -> list[int]:
    """Clicks made up to each mask step, in step order (step 0, the box, has none; a step clicks once or twice)."""
    total, out = 0, []
    for _, _, _, action in sorted(steps or [], key=lambda row: row[2] if row[2] is not None else 0):
        total += CLICKS_PER_ACTION.get(action, 0)
        out.append(total)
    return out


def _score_steps(steps, ground_truth, convention, sample_id, field):
    """Scores of every step mask, in step order; each mask is its detection mask pasted at its box."""
    if not steps:
        return []
    height, width = ground_truth.shape
    target_area = score_item(None, ground_truth, convention).union
    scores = []
    for mask, box, number, _ in sorted(steps, key=lambda row: row[2] if row[2] is not None else 0):
        if mask is None:
            raise ValueError(f"sample {sample_id}: {field} step {number} has no mask")
        crop, x, y = placed_crop(mask, box, width, height)
        scores.append(score_crop(crop, x, y, ground_truth, convention, target_area=target_area))
    return scores


class ReasonSegResults(foe.EvaluationResults):
    """Per-sample intersections and unions (final and after every step) and the summaries built from them."""

    def __init__(self, samples, config, eval_key, ids, intersections, unions, step_intersections=None,
                 step_unions=None, stopped_by_agent=None, is_sentence=None, backend=None, missing=None,
                 step_clicks=None):
        super().__init__(samples, config, eval_key, backend=backend)
        self.ids = list(ids)
        self.intersections = [int(v) for v in intersections]
        self.unions = [int(v) for v in unions]
        self.missing = [bool(v) for v in (missing or [False] * len(self.ids))]  # no prediction at all
        self.step_intersections = [list(map(int, r)) for r in (step_intersections or [[] for _ in self.ids])]
        self.step_unions = [list(map(int, r)) for r in (step_unions or [[] for _ in self.ids])]
        self.stopped_by_agent = [bool(v) for v in (stopped_by_agent or [False] * len(self.ids))]
        self.is_sentence = list(is_sentence) if is_sentence is not None else [None] * len(self.ids)
        self.step_clicks = [list(map(int, r)) for r in (step_clicks or [[] for _ in self.ids])]

    @property
    def protocol(self) -> str:
        return self.config.protocol

    @property
    def ious(self) -> np.ndarray:
        """Per-sample IoU of the final mask (NaN where the convention leaves the item out)."""
        return item_ious(self.intersections, self.unions, self.protocol, self.missing)

    @property
    def step_ious(self) -> list[np.ndarray]:
        """Per-sample IoUs after each of its own steps (not carried forward)."""
        return [item_ious(i, u, self.protocol) for i, u in zip(self.step_intersections, self.step_unions)]

    @property
    def num_steps(self) -> list[int]:
        return [len(row) for row in self.step_intersections]

    def metrics(self) -> dict:
        """``{"gIoU", "cIoU", "count"}`` over the evaluated samples (fractions in [0, 1])."""
        return summarize_counts(self.intersections, self.unions, self.protocol, self.missing)

    def step_curve(self) -> list[dict]:
        """gIoU/cIoU after each step, every sample's last mask carried forward (samples without steps count with
        their final score); `refined` = samples that produced a mask at that step."""
        depth = max(self.num_steps, default=0)
        curve = []
        for step in range(depth):
            inter, union, missing = [], [], []
            for i, row_i, row_u in zip(range(len(self.ids)), self.step_intersections, self.step_unions):
                inter.append(row_i[min(step, len(row_i) - 1)] if row_i else self.intersections[i])
                union.append(row_u[min(step, len(row_u) - 1)] if row_u else self.unions[i])
                missing.append(not row_i and self.missing[i])
            summary = summarize_counts(inter, union, self.protocol, missing)
            curve.append({"step": step, "gIoU": summary["gIoU"], "cIoU": summary["cIoU"],
                          "refined": sum(n > step for n in self.num_steps)})
        return curve

    def stop_rates(self) -> list[dict]:
        """Per step: how many samples the agent stopped by itself after seeing that step's mask, as a share of all
        evaluated samples, and the cumulative share."""
        depth = max(self.num_steps, default=0)
        total = max(len(self.ids), 1)
        rows, cumulative = [], 0
        for step in range(depth):
            count = sum(s and n - 1 == step for s, n in zip(self.stopped_by_agent, self.num_steps))
            cumulative += count
            rows.append({"step": step, "stopped": count, "share": count / total,
                         "cumulative_share": cumulative / total})
        return rows

    def by_query_type(self) -> dict[str, dict]:
        """Metrics split by ``is_sentence`` (``sentence`` / ``phrase``) where the samples carry it."""
        split = {}
        for flag, name in QUERY_TYPES.items():
            rows = [i for i, v in enumerate(self.is_sentence) if v is flag]
            if rows:
                split[name] = summarize_counts([self.intersections[i] for i in rows],
                                               [self.unions[i] for i in rows], self.protocol,
                                               [self.missing[i] for i in rows])
        return split

    def noc(self) -> dict[str, float] | None:
        """NoC@85 and NoC@90, the interactive-segmentation protocol's clicks to reach IoU 0.85 / 0.90 (capped at
        20: a sample that never reaches it, or stops before, counts 20); None for results without steps."""
        if not any(self.step_intersections):
            return None
        items = [(ious.tolist(), clicks) for ious, clicks in zip(self.step_ious, self.step_clicks)]
        return {f"NoC@{round(t * 100)}": mean_clicks_to_reach(items, t) for t in NOC_THRESHOLDS}

    def histogram(self, bins: int = HISTOGRAM_BINS) -> list[dict]:
        """Counts of final IoUs in `bins` equal bins over [0, 1] (the last bin includes 1)."""
        ious = self.ious[~np.isnan(self.ious)]
        counts, edges = np.histogram(ious, bins=histogram_edges(bins))
        return [{"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(counts[i])} for i in range(bins)]

    def report(self) -> dict:
        """Everything at once: metrics, curve, stop rates, split by query type, histogram, protocol."""
        return {"protocol": self.protocol, "metrics": self.metrics(), "step_curve": self.step_curve(),
                "stop_rates": self.stop_rates(), "by_query_type": self.by_query_type(),
                "histogram": self.histogram(), "noc": self.noc()}

    def attributes(self):
        return ["cls", "ids", "intersections", "unions", "step_intersections", "step_unions", "stopped_by_agent",
                "is_sentence", "missing", "step_clicks"]

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        return cls(samples, config, eval_key, d["ids"], d["intersections"], d["unions"],
                   step_intersections=d.get("step_intersections"), step_unions=d.get("step_unions"),
                   stopped_by_agent=d.get("stopped_by_agent"), is_sentence=d.get("is_sentence"),
                   missing=d.get("missing"), step_clicks=d.get("step_clicks"), **kwargs)
