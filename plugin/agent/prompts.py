"""What the policy is told and in which coordinates it answers, per model family.

One `ModelFamily` bundles the prompt templates, the size the image is resized to before the policy sees it and
the coordinate convention of the answers. The trainer uses the same objects, so what is trained is what runs.

Answer format (all families): ``<think>reasoning</think><answer>{json}</answer>`` where the JSON is
``{"bbox_2d": [x1, y1, x2, y2]}`` for grounding and
``{"positive_point": [x, y] | null, "negative_point": [x, y] | null}`` for refinement (both null = stop).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

PIXELS = "pixels"
NORMALIZED_1000 = "normalized_1000"


@dataclass(frozen=True)
class ModelFamily:
    """Prompts and coordinate convention of one family of policies.

    `coordinates` is `"pixels"` (absolute pixels of the image as resized to `input_size`, Qwen2/2.5-VL) or
    `"normalized_1000"` (a 0-1000 grid over the image, Qwen3-VL). `input_size` is (width, height). With
    `query_first` the prompt text comes before the image in the chat: a causal model's image tokens then see the
    query (the mini policy learns to localise far faster so; released models are trained image first).
    """

    name: str
    coordinates: str = PIXELS
    input_size: tuple[int, int] = (840, 840)
    grounding_template: str = GROUNDING_TEMPLATE
    refine_template: str = REFINE_TEMPLATE
    system_prompt: str = "You are a helpful assistant."
    query_first: bool = False  # the prompt text before the image, so image tokens are read in the light of the query

    def __post_init__(self) -> None:
        if self.coordinates not in (PIXELS, NORMALIZED_1000):
            raise ValueError(f"unknown coordinate convention {self.coordinates!r}: use 'pixels' or 'normalized_1000'")

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


def family_for(model_type: str) -> ModelFamily:
    """The family of a `transformers` config's `model_type`, e.g. ``"qwen2_5_vl"``."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"no prompt family for model type {model_type!r}; known: {sorted(FAMILIES)}. "
            "Pass a ModelFamily explicitly to use another model."
        ) from None
