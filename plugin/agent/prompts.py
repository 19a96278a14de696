"""What the policy is told and in which coordinates it answers, per model family.

One `ModelFamily` bundles the prompt templates, the size the image is resized to before the policy sees it, the
coordinate convention and the format of the answers, and how many refinement steps it makes by default. The
trainer uses the same objects, so what is trained is what runs.

SAM-Veteran's answer format (the Qwen families): ``<think>reasoning</think><answer>{json}</answer>`` where the
JSON is ``{"bbox_2d": [x1, y1, x2, y2]}`` for grounding and
``{"positive_point": [x, y] | null, "negative_point": [x, y] | null}`` for refinement (both null = stop).

Peers' checkpoints run in the same harness with their own prompt text and answer format, copied from their
evaluation scripts (both resize the image to 840x840 and answer in its pixels):

- ``seg_zero`` (dvlab-research/Seg-Zero): ``{"bbox": [...], "points_1": [x, y], "points_2": [x, y]}``, both points
  positive clicks given with the box (Seg-Zero passes ``point_labels=[1, 1]``).
- ``vision_reasoner`` (dvlab-research/VisionReasoner): a JSON list of ``{"bbox_2d": [...], "point_2d": [x, y]}``,
  one per object; several objects become their enclosing box and every point as a positive click (one mask per
  query), an empty list means nothing was found.

Peers were not trained to refine, so their families make no refinement steps unless ``max_steps`` asks for some.
`resolve_family` picks the family: an explicit name or `ModelFamily`, else `KNOWN_POLICIES` (hub id -> family),
else the checkpoint's ``model_type``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

GROUNDING_TEMPLATE = (
    "Find the object described by the query: \"{query}\".\n"
    "Think about which object in the image the query refers to, then give one bounding box around it.\n"
    "Coordinates: {coordinates}.\n"
    "Output the reasoning inside <think> </think> and then the answer inside <answer> </answer> as JSON, e.g.\n"
    "<think>...</think><answer>{{\"bbox_2d\": [{example_box}]}}</answer>"
)

REFINE_TEMPLATE = (
    "The query is: \"{query}\". The current segmentation mask is drawn over the image in green.\n"
    "Decide whether the mask covers exactly the object of the query. If it misses part of the object, give a "
    "positive point inside the missed part. If it covers something that is not the object, give a negative point "
    "inside the wrongly covered part. You may give both, one of them, or neither when the mask is good enough.\n"
    "Coordinates: {coordinates}.\n"
    "Output the reasoning inside <think> </think> and then the answer inside <answer> </answer> as JSON, e.g.\n"
    "<think>...</think><answer>{{\"positive_point\": [{example_point}], \"negative_point\": null}}</answer>\n"
    "or, when the mask is good enough:\n"
    "<think>...</think><answer>{{\"positive_point\": null, \"negative_point\": null}}</answer>"
)

SEG_ZERO_TEMPLATE = (  # Seg-Zero's QUESTION_TEMPLATE with its example answer (evaluation_scripts/evaluation.py)
    "Please find '{query}' with bbox and points."
    "Compare the difference between objects and find the most closely matched one."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>{{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}}</answer>"
)

VISION_REASONER_TEMPLATE = (  # VisionReasoner's DETECTION_TEMPLATE with its example answer
    "Please find \"{query}\" with bboxs and points."
    "Compare the difference between object(s) and find the most closely matched object(s)."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>[{{\"bbox_2d\": [10,100,200,210], \"point_2d\": [30,110]}}, "
    "{{\"bbox_2d\": [225,296,706,786], \"point_2d\": [302,410]}}]</answer>"
)

PIXELS = "pixels"
NORMALIZED_1000 = "normalized_1000"
SAM_VETERAN, SEG_ZERO, VISION_REASONER = "sam_veteran", "seg_zero", "vision_reasoner"  # answer formats
ANSWER_FORMATS = (SAM_VETERAN, SEG_ZERO, VISION_REASONER)
DEFAULT_MAX_STEPS = 3


@dataclass(frozen=True)
class ModelFamily:
    """Prompts and coordinate convention of one family of policies.

    `coordinates` is `"pixels"` (absolute pixels of the image as resized to `input_size`, Qwen2/2.5-VL) or
    `"normalized_1000"` (a 0-1000 grid over the image, Qwen3-VL). `input_size` is (width, height).
    `answer_format` names the grounding answer `parsing.parse_grounding` reads; `max_steps` is the refinement
    steps the agent makes when the caller does not say; `query_strip`, when set, is how the family's own code
    normalises the query (lower-cased, these characters stripped from both ends). With `query_first` the prompt
    text comes before the image in the chat: a causal model's image tokens then see the query (the mini policy
    learns to localise far faster so; released models are trained image first).
    """

    name: str
    coordinates: str = PIXELS
    input_size: tuple[int, int] = (840, 840)
    grounding_template: str = GROUNDING_TEMPLATE
    refine_template: str = REFINE_TEMPLATE
    system_prompt: str = "You are a helpful assistant."
    answer_format: str = SAM_VETERAN
    max_steps: int = DEFAULT_MAX_STEPS
    query_strip: str | None = None
    query_first: bool = False  # the prompt text before the image, so image tokens are read in the light of the query

    def __post_init__(self) -> None:
        if self.coordinates not in (PIXELS, NORMALIZED_1000):
            raise ValueError(f"unknown coordinate convention {self.coordinates!r}: use 'pixels' or 'normalized_1000'")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"unknown answer format {self.answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")

    @property
    def grid_size(self) -> tuple[float, float]:
        """The (width, height) of the space the policy's coordinates live in."""
        if self.coordinates == NORMALIZED_1000:
            return (1000.0, 1000.0)
        return (float(self.input_size[0]), float(self.input_size[1]))

    def to_image(self, xy: tuple[float, float], image_size: tuple[int, int]) -> tuple[float, float]:
        """Map a point from the policy's coordinates to pixels of the original image."""
        gw, gh = self.grid_size
        return (xy[0] * image_size[0] / gw, xy[1] * image_size[1] / gh)

    def to_policy(self, xy: tuple[float, float], image_size: tuple[int, int]) -> tuple[float, float]:
        """Map a point from pixels of the original image to the policy's coordinates (for training targets)."""
        gw, gh = self.grid_size
        return (xy[0] * gw / image_size[0], xy[1] * gh / image_size[1])

    def box_to_image(self, box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        x1, y1 = self.to_image(box[:2], image_size)
        x2, y2 = self.to_image(box[2:], image_size)
        return (x1, y1, x2, y2)

    def box_to_policy(self, box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        x1, y1 = self.to_policy(box[:2], image_size)
        x2, y2 = self.to_policy(box[2:], image_size)
        return (x1, y1, x2, y2)

    def _coordinates_text(self) -> str:
        if self.coordinates == NORMALIZED_1000:
            return "integers on a 0-1000 grid over the image, (0, 0) top left, (1000, 1000) bottom right"
        width, height = self.input_size
        return f"absolute pixels of this {width}x{height} image, (0, 0) top left"

    def grounding_prompt(self, query: str) -> str:
        gw, gh = self.grid_size
        example = f"{round(gw * 0.2)}, {round(gh * 0.3)}, {round(gw * 0.6)}, {round(gh * 0.8)}"
        if self.query_strip is not None:
            query = query.lower().strip(self.query_strip)
        return self.grounding_template.format(query=query, coordinates=self._coordinates_text(), example_box=example)

    def refine_prompt(self, query: str) -> str:
        gw, gh = self.grid_size
        example = f"{round(gw * 0.4)}, {round(gh * 0.5)}"
        return self.refine_template.format(query=query, coordinates=self._coordinates_text(), example_point=example)

    def with_input_size(self, input_size: tuple[int, int]) -> "ModelFamily":
        return replace(self, input_size=tuple(input_size))


MINI_GROUNDING_TEMPLATE = "Box \"{query}\" (bbox_2d) in {coordinates}."

MINI_REFINE_TEMPLATE = (
    "Green is the mask of \"{query}\": click a missed part (positive_point), a wrong part (negative_point) or "
    "neither (null, null) in {coordinates}."
)

FAMILIES: dict[str, ModelFamily] = {
    "qwen2_5_vl": ModelFamily("qwen2_5_vl", coordinates=PIXELS),
    "qwen2_vl": ModelFamily("qwen2_vl", coordinates=PIXELS),
    "qwen3_vl": ModelFamily("qwen3_vl", coordinates=NORMALIZED_1000),
    # the shipped mini policy (a small Qwen2.5-VL): a small view, so image tokens stay few, and short prompts
    "mini": ModelFamily("mini", coordinates=PIXELS, input_size=(168, 168), grounding_template=MINI_GROUNDING_TEMPLATE,
                        refine_template=MINI_REFINE_TEMPLATE, system_prompt="Segment.", query_first=True),
}

# Peers' checkpoints (Qwen2.5-VL-7B fine-tunes) with their own prompt and answer format; no refinement by default.
PEER_FAMILIES: dict[str, ModelFamily] = {
    "seg_zero": ModelFamily("seg_zero", coordinates=PIXELS, input_size=(840, 840),
                            grounding_template=SEG_ZERO_TEMPLATE, answer_format=SEG_ZERO, max_steps=0,
                            query_strip="."),
    "vision_reasoner": ModelFamily("vision_reasoner", coordinates=PIXELS, input_size=(840, 840),
                                   grounding_template=VISION_REASONER_TEMPLATE, answer_format=VISION_REASONER,
                                   max_steps=0, query_strip=".\"?!"),
}

# Hub ids whose family is not their model_type's: the peers' released checkpoints.
KNOWN_POLICIES: dict[str, str] = {
    "Ricky06662/Seg-Zero-7B": "seg_zero",
    "Ricky06662/VisionReasoner-7B": "vision_reasoner",
}


def family_for(model_type: str) -> ModelFamily:
    """The family of a `transformers` config's `model_type`, e.g. ``"qwen2_5_vl"``."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"no prompt family for model type {model_type!r}; known: {sorted(FAMILIES)}. "
            "Pass a ModelFamily explicitly to use another model."
        ) from None


def get_family(name: str) -> ModelFamily:
    """A family by name: a model type's (``qwen2_5_vl``, ...) or a peer's (``seg_zero``, ``vision_reasoner``)."""
    family = FAMILIES.get(name) or PEER_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(family_names())}")
    return family


def family_names() -> list[str]:
    return [*FAMILIES, *PEER_FAMILIES]


FAMILY_FILE = "sam_veteran.json"  # in a policy folder: {"family": name}, the prompt family it was trained with


def record_family(directory: str | Path, family: str) -> None:
    """Write the family a policy folder was trained with, so every loader (agent, trainer) prompts it the same."""
    (Path(directory) / FAMILY_FILE).write_text(json.dumps({"family": family}) + "\n")


def resolve_family(family: str | ModelFamily | None, name_or_path=None, model_type: str | None = None) -> ModelFamily:
    """The family a policy runs with: `family` when given (a name or a `ModelFamily`), else the one recorded in the
    policy folder `name_or_path` (`FAMILY_FILE`), else the known family of the hub id (`KNOWN_POLICIES`), else that
    of the checkpoint's `model_type`."""
    if isinstance(family, ModelFamily):
        return family
    recorded = Path(str(name_or_path)) / FAMILY_FILE if name_or_path is not None else None
    if not family and recorded is not None and recorded.is_file():
        family = json.loads(recorded.read_text())["family"]
    if family:
        return get_family(family)
    known = KNOWN_POLICIES.get(str(name_or_path)) if name_or_path is not None else None
    if known:
        return PEER_FAMILIES[known]
    if model_type is None:
        raise ValueError("cannot tell the policy's model family: pass family=")
    return family_for(model_type)
