"""The three task streams of multi-task GRPO, built from a FiftyOne view.

- grounding: image + query -> a box;
- mask: image + query + a mask overlay -> clicks or stop. The masks come from the segmenter: on perturbed
  ground-truth boxes ("needs refinement", mostly), on the tight ground-truth box for a `good_share` drawn to be
  "good enough" (the ground truth itself where the segmenter's mask falls short of `good_iou`) and, while
  training, on the current policy's own boxes (`refresh.py`);
- auxiliary: the ground-truth mask corrupted with random polygons (an added area is a false positive, a removed
  area a false negative) -> a negative click on the added area, a positive click on the removed one; a
  `clean_share` of the items show the ground truth unchanged -> stop.

Stopping is learnable only if some items of each stream reward a stop, and if the stop items look like what the
agent meets at inference: hence segmenter masks as good-enough items, a `good_iou` that such masks can reach (the
paper's 1.0, with a 2-pixel tolerant IoU, is essentially never reached by a segmenter), and clean auxiliary items
beside the corrupted ones, which show the same ground-truth-drawn masks so that only the defect tells them apart.

FiftyOne is read once, in bulk (`values()`), into `SampleRecord`s; every `TaskRecord` holds plain numbers and
run-length-encoded masks, so the rewards never touch FiftyOne. `task_dataset` renders each prompt with the agent's
own `messages`, prompts and `policy_view`: what is trained is exactly what runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ..plugin.agent.images import load_image
from ..plugin.agent.overlay import OverlayStyle, policy_view
from ..plugin.agent.policy import PolicyRequest, messages
from ..plugin.agent.prompts import ModelFamily
from ..plugin.metrics import IGNORE
from .rewards import (AMBIGUOUS, AUXILIARY, GOOD, GROUNDING, MASK, REFINE, TASKS, EmbeddingCache, mask_box,
                      mask_centre, tolerant_iou)

logger = logging.getLogger(__name__)

PAPER_GOOD_IOU = 1.0  # the paper's "good enough": a tolerant IoU of 1


def encode_mask(mask: np.ndarray) -> dict:
    """A boolean mask as COCO run-length encoding (a few hundred bytes instead of a full array)."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def decode_mask(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


@dataclass
class SampleRecord:
    """One (image, query) item of the view with its ground truth, kept run-length encoded (a training view can
    hold a hundred thousand masks); `target` and `ignore` decode them, image-sized."""

    sample_id: str
    filepath: str
    query: str
    image_size: tuple[int, int]  # (width, height)
    box: tuple[float, float, float, float]  # the target's tight box
    target_rle: dict
    ignore_rle: dict | None  # pixels marked 255

    @property
    def target(self) -> np.ndarray:
        return decode_mask(self.target_rle)

    @property
    def ignore(self) -> np.ndarray | None:
        return None if self.ignore_rle is None else decode_mask(self.ignore_rle)


@dataclass
class TaskRecord:
    """One training prompt and what its rewards need. Boxes and points are in original-image pixels."""

    task: str
    sample_id: str
    filepath: str
    query: str
    image_size: tuple[int, int]  # (width, height)
    gt_box: tuple[float, float, float, float]
    gt_rle: dict
    ignore_rle: dict | None = None
    shown_rle: dict | None = None  # the mask drawn over the image (mask and auxiliary tasks)
    mask_source: str | None = None  # "segmenter" or "ground_truth"
    prompt_box: tuple[float, float, float, float] | None = None  # the box the segmenter was prompted with
    shown_iou: float | None = None  # near-edge-tolerant IoU of the shown mask
    case: str | None = None  # mask: "good", "refine" or "ambiguous"; auxiliary: "good" (clean) or "refine"
    drawn_good: bool = False  # mask: drawn to be good enough (the tight box; the ground truth if that falls short)
    false_negative_centre: tuple[float, float] | None = None  # auxiliary: centre of the removed area
    false_positive_centre: tuple[float, float] | None = None  # auxiliary: centre of the added area

    def gt_mask(self) -> np.ndarray:
        return decode_mask(self.gt_rle)

    def ignore_mask(self) -> np.ndarray | None:
        return None if self.ignore_rle is None else decode_mask(self.ignore_rle)

    def shown_mask(self) -> np.ndarray | None:
        return None if self.shown_rle is None else decode_mask(self.shown_rle)

    def load_image(self) -> np.ndarray:
        return load_image(self.filepath)


@dataclass
class TaskConfig:
    """How the task streams are drawn. `ratios` need not sum to 1; `items_per_sample` sets the dataset size."""

    ratios: dict[str, float] = field(default_factory=lambda: {GROUNDING: 0.4, MASK: 0.4, AUXILIARY: 0.2})
    items_per_sample: float = 3.0
    box_jitter: float = 0.15  # std of each box corner's noise, as a fraction of the box's width / height
    good_share: float = 0.3  # share of mask items drawn to be good enough (stop is right)
    good_source: str = "segmenter"  # their mask: the segmenter's on the tight box, or always "ground_truth"
    good_iou: float = 0.95  # tolerant IoU at or above which a mask is good enough (the paper: 1.0, PAPER_GOOD_IOU)
    refine_iou: float = 0.9  # tolerant IoU below which a mask needs refinement
    edge_tolerance: int = 2  # pixels around the ground truth's edge that the tolerant IoU forgives
    defect_scale: tuple[float, float] = (0.15, 0.4)  # polygon radius, as a fraction of the object's box size
    defect_kinds: dict[str, float] = field(default_factory=lambda: {"add": 0.4, "remove": 0.4, "both": 0.2})
    min_defect_fraction: float = 0.03  # smallest defect, as a fraction of the object's area
    clean_share: float = 0.2  # share of auxiliary items shown without a defect (stop is right)
    policy_refresh_steps: int = 10  # every N steps some mask items are redrawn from the policy's own boxes; 0 = off
    policy_refresh_items: int = 16  # how many mask items each refresh replaces

    def __post_init__(self) -> None:
        unknown = set(self.ratios) - set(TASKS)
        if unknown or not any(v > 0 for v in self.ratios.values()) or any(v < 0 for v in self.ratios.values()):
            raise ValueError(f"task ratios must be non-negative weights over {TASKS} with one positive, "
                             f"got {self.ratios}")
        if self.good_source not in ("segmenter", "ground_truth"):
            raise ValueError(f"tasks.good_source is 'segmenter' or 'ground_truth', got {self.good_source!r}")
        for name in ("good_share", "clean_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"tasks.{name} is a share in [0, 1], got {getattr(self, name)}")
        if set(self.defect_kinds) - {"add", "remove", "both"}:
            raise ValueError(f"defect kinds are 'add', 'remove', 'both', got {sorted(self.defect_kinds)}")


def read_view(view, prompt_field: str = "query", gt_field: str = "ground_truth",
              chunk_size: int = 1000) -> list[SampleRecord]:
    """Read queries and ground-truth masks (`fo.Segmentation`: 0 background, 1 target, 255 ignore) in bulk,
    `chunk_size` samples per `values()` call, so only one chunk of full masks is ever in memory.

    Samples without a query or a target pixel, or whose mask and image sizes differ, are skipped, each reported
    by id. Image sizes come from the samples' metadata, computed first where missing.
    """
    missing = view.exists("metadata", False)
    if len(missing):
        missing.compute_metadata()
    fields = ["id", "filepath", prompt_field, f"{gt_field}.mask", f"{gt_field}.mask_path", "metadata.width",
              "metadata.height"]
    ids = view.values("id")
    records, skipped = [], []
    for start in range(0, len(ids), chunk_size):
        chunk = view.select(ids[start : start + chunk_size], ordered=True)
        for values in zip(*chunk.values(fields)):
            record = _sample_record(*values, prompt_field=prompt_field, gt_field=gt_field)
            if isinstance(record, str):
                skipped.append(record)
            else:
                records.append(record)
    if skipped:
        logger.warning("skipped %d of %d samples: %s", len(skipped), len(ids), "; ".join(skipped[:20]))
    if not records:
        raise ValueError(f"no usable training sample in the view ({len(skipped)} skipped): " + "; ".join(skipped[:5]))
    return records


def _sample_record(sample_id, path, query, mask, mask_path, width, height, prompt_field: str,
                   gt_field: str) -> SampleRecord | str:
    """The sample's record, or why it cannot be used."""
    if not isinstance(query, str) or not query.strip():
        return f"{sample_id}: no query in '{prompt_field}'"
    if mask is None and mask_path:
        mask = np.asarray(Image.open(mask_path))
    if mask is None:
        return f"{sample_id}: no mask in '{gt_field}'"
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if width and height and mask.shape != (height, width):
        return f"{sample_id}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"
    ignore = mask == IGNORE
    target = (mask > 0) & ~ignore
    if not target.any():
        return f"{sample_id}: the ground truth has no target pixel"
    return SampleRecord(sample_id, path, query, (mask.shape[1], mask.shape[0]), mask_box(target),
                        encode_mask(target), encode_mask(ignore) if ignore.any() else None)


def allocate(total: int, ratios: dict[str, float]) -> dict[str, int]:
    """Split `total` items across tasks in proportion to `ratios` (largest remainder, ties in `TASKS` order)."""
    weights = np.array([max(ratios.get(t, 0.0), 0.0) for t in TASKS], dtype=float)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for i in sorted(range(len(TASKS)), key=lambda i: (counts[i] - exact[i], i))[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(TASKS, counts.tolist()))


def build_tasks(samples: list[SampleRecord], config: TaskConfig | None = None, seed: int = 0) -> list[TaskRecord]:
    """Draw the mixed task list (shuffled) from the samples."""
    config = config or TaskConfig()
    rng = np.random.default_rng(seed)
    counts = allocate(max(1, round(config.items_per_sample * len(samples))), config.ratios)
    picks = {task: [samples[i % len(samples)] for i in
                    np.concatenate([rng.permutation(len(samples)) for _ in range(n // len(samples) + 1)])[:n]]
             for task, n in counts.items()}
    records = [_base(GROUNDING, s) for s in picks[GROUNDING]]
    records += _mask_tasks(picks[MASK], config, rng)
    records += [r for r in (_auxiliary_task(s, config, rng) for s in picks[AUXILIARY]) if r is not None]
    return [records[i] for i in rng.permutation(len(records))]


def _base(task: str, sample: SampleRecord, **fields) -> TaskRecord:
    return TaskRecord(task=task, sample_id=sample.sample_id, filepath=sample.filepath, query=sample.query,
                      image_size=sample.image_size, gt_box=sample.box, gt_rle=sample.target_rle,
                      ignore_rle=sample.ignore_rle, **fields)


def _mask_tasks(samples: list[SampleRecord], config: TaskConfig, rng) -> list[TaskRecord]:
    """Mask-comprehension items: a `good_share` drawn to be good enough, the others on a perturbed ground-truth
    box; the segmenter's masks are made the first time an item is used (`complete_mask_item`)."""
    good = rng.random(len(samples)) < config.good_share
    items = []
    for sample, drawn_good in zip(samples, good):
        if drawn_good and config.good_source == "ground_truth":
            items.append(_ground_truth_item(sample))
        elif drawn_good:
            items.append(_base(MASK, sample, mask_source="segmenter", prompt_box=sample.box, drawn_good=True))
        else:
            items.append(_base(MASK, sample, mask_source="segmenter",
                               prompt_box=perturb_box(sample.box, sample.image_size, config.box_jitter, rng)))
    return items


def _ground_truth_item(sample: SampleRecord) -> TaskRecord:
    return _base(MASK, sample, shown_rle=sample.target_rle, mask_source="ground_truth", prompt_box=sample.box,
                 shown_iou=1.0, case=GOOD, drawn_good=True)


def mask_case(iou: float, config: TaskConfig) -> str:
    """"good" at or above `good_iou`, "refine" below `refine_iou`, else "ambiguous" (tolerant IoU)."""
    return GOOD if iou >= config.good_iou - 1e-9 else REFINE if iou < config.refine_iou else AMBIGUOUS


def complete_mask_item(record: TaskRecord, embeddings: EmbeddingCache, config: TaskConfig) -> TaskRecord:
    """The item with the segmenter's mask for its prompt box, its tolerant IoU and its case. Done lazily, in the
    process that trains on the item, so start-up costs nothing and the image's embedding is the one the rewards
    reuse. An item drawn to be good enough whose mask falls short of `good_iou` shows the ground truth instead."""
    shown = embeddings.segmenter.segment(embeddings.get(record), record.prompt_box).mask
    iou = tolerant_iou(shown, record.gt_mask(), record.ignore_mask(), config.edge_tolerance)
    case = mask_case(iou, config)
    if record.drawn_good and case != GOOD:
        return replace(record, shown_rle=record.gt_rle, mask_source="ground_truth", shown_iou=1.0, case=GOOD)
    return replace(record, shown_rle=encode_mask(shown), shown_iou=iou, case=case)


def perturb_box(box, image_size: tuple[int, int], jitter: float, rng) -> tuple[float, float, float, float]:
    """The box with each corner moved by Gaussian noise (std `jitter` x the box size), kept inside the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    noise = rng.normal(0.0, jitter, 4) * np.array([w, h, w, h])
    x1, y1, x2, y2 = np.array(box) + noise
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    width, height = image_size
    x1, x2 = np.clip([x1, max(x2, x1 + 2)], 0, width)
    y1, y2 = np.clip([y1, max(y2, y1 + 2)], 0, height)
    if x2 - x1 < 2:
        x1 = max(0.0, x2 - 2)
    if y2 - y1 < 2:
        y1 = max(0.0, y2 - 2)
    return (float(x1), float(y1), float(x2), float(y2))


def random_polygon(centre: tuple[float, float], radius: float, size: tuple[int, int], rng) -> np.ndarray:
    """A filled random star-shaped polygon (3-8 vertices) around `centre`, as a boolean mask of `size` (w, h)."""
    count = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = radius * rng.uniform(0.5, 1.0, count)
    points = [(centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)) for a, r in zip(angles, radii)]
    layer = Image.new("L", size, 0)
    ImageDraw.Draw(layer).polygon(points, fill=255)
    return np.asarray(layer) > 0


def corrupt_mask(sample: SampleRecord, kind: str, config: TaskConfig, rng, tries: int = 20):
    """The ground truth with a polygon added outside it ("add"), removed from it ("remove") or both.

    Returns (corrupted mask, false-negative centre, false-positive centre); a defect smaller than
    `min_defect_fraction` of the object is redrawn, up to `tries` times (then the largest drawn is kept).
    """
    target, ignore = sample.target, sample.ignore
    x1, y1, x2, y2 = sample.box
    scale = max(x2 - x1, y2 - y1)
    minimum = config.min_defect_fraction * np.count_nonzero(target)
    allowed = ~target if ignore is None else ~target & ~ignore

    def draw(region: np.ndarray, pick_from: np.ndarray) -> np.ndarray:
        best = np.zeros_like(target)
        ys, xs = np.nonzero(pick_from)
        for _ in range(tries):
            i = int(rng.integers(len(xs)))
            radius = scale * rng.uniform(*config.defect_scale)
            defect = random_polygon((xs[i] + 0.5, ys[i] + 0.5), radius, sample.image_size, rng) & region
            if np.count_nonzero(defect) > np.count_nonzero(best):
                best = defect
            if np.count_nonzero(best) >= minimum:
                break
        return best

    corrupted, fn_centre, fp_centre = target.copy(), None, None
    if kind in ("remove", "both"):
        removed = draw(target, target)
        corrupted &= ~removed
        fn_centre = mask_centre(removed)
    if kind in ("add", "both"):
        near = np.zeros_like(target)
        pad = int(scale * 0.25) + 1
        near[max(0, int(y1) - pad): int(y2) + pad, max(0, int(x1) - pad): int(x2) + pad] = True
        near &= allowed
        if near.any():
            added = draw(allowed, near)
            corrupted |= added
            fp_centre = mask_centre(added)
    return corrupted, fn_centre, fp_centre


def _auxiliary_task(sample: SampleRecord, config: TaskConfig, rng) -> TaskRecord | None:
    """A corrupted-mask item, or for a `clean_share` the ground truth unchanged (stop is right); when the drawn
    kind leaves no defect (no room outside the object), the other kinds are tried; an object too small for any
    defect gives no item."""
    if rng.random() < config.clean_share:
        return _base(AUXILIARY, sample, shown_rle=sample.target_rle, mask_source="ground_truth",
                     prompt_box=sample.box, case=GOOD)
    kinds = list(config.defect_kinds)
    weights = np.array([config.defect_kinds[k] for k in kinds], dtype=float)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    for attempt in dict.fromkeys([kind, "remove", "add"]):
        corrupted, fn_centre, fp_centre = corrupt_mask(sample, attempt, config, rng)
        if fn_centre is not None or fp_centre is not None:
            return _base(AUXILIARY, sample, shown_rle=encode_mask(corrupted), mask_source="ground_truth",
                         prompt_box=sample.box, case=REFINE, false_negative_centre=fn_centre,
                         false_positive_centre=fp_centre)
    logger.warning("sample %s: no room for a defect in its ground truth; no auxiliary item", sample.sample_id)
    return None


def task_dataset(records: list[TaskRecord], family: ModelFamily, embeddings: EmbeddingCache,
                 config: TaskConfig | None = None, overlay: OverlayStyle = OverlayStyle()):
    """The task records as a `datasets.Dataset` (what TRL takes) rendered on access into TRL rows: the agent's
    chat (`prompt`), the policy's view (`image`), the `task` and the `record` the rewards read. A mask item whose
    mask is not made yet gets it now (and keeps it)."""
    from datasets import Dataset

    config = config or TaskConfig()

    def row(index: int) -> dict:
        if records[index].task == MASK and records[index].shown_rle is None:
            records[index] = complete_mask_item(records[index], embeddings, config)
        return render_record(records[index], family, overlay)

    def render(batch: dict) -> dict:
        rows = [row(i) for i in batch["index"]]
        return {key: [r[key] for r in rows] for key in ("prompt", "image", "task", "record")}

    dataset = Dataset.from_dict({"index": list(range(len(records)))})
    dataset.set_transform(render)
    return dataset


def render_record(record: TaskRecord, family: ModelFamily, overlay: OverlayStyle = OverlayStyle()) -> dict:
    """One TRL row, built with the agent's own prompts, overlay and chat: what is trained is what runs."""
    image = record.load_image()
    if (image.shape[1], image.shape[0]) != tuple(record.image_size):
        raise ValueError(f"sample {record.sample_id}: ground-truth mask is {record.image_size[0]}x"
                         f"{record.image_size[1]} but the image {record.filepath} is {image.shape[1]}x{image.shape[0]}")
    if record.task == GROUNDING:
        view = policy_view(image, family.input_size)
        prompt = family.grounding_prompt(record.query)
    else:
        view = policy_view(image, family.input_size, record.shown_mask(), overlay)
        prompt = family.refine_prompt(record.query)
    return {"prompt": messages(PolicyRequest(view, prompt), family), "image": view, "task": record.task,
            "record": record}
