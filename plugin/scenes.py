"""The scene world: generated images where box, clicks and reasoning all matter, with exact ground truth.

Coloured shapes on textured backgrounds, drawn in order so later shapes occlude earlier ones (a target's box then
covers parts of others), with same-colour and same-shape distractors, touching shapes and thin parts (the cross).
Each scene comes with one query of a kind:

- ``referring``: "the red circle";
- ``spatial``: "the shape left of the blue square" (exactly one shape lies that way);
- ``comparative``: "the largest green shape" (clearly larger than the next);
- ``reasoning``: "the shape with the most corners that is not red" (a unique answer).

Scenes are addressed by (split, index) and seeded from both, so every split is reproducible and disjoint. The
``test`` split holds colour/shape pairs (`HELD_OUT`) that never appear in ``train`` or ``val`` scenes at all.
The ground truth is the target's visible area, exactly. No FiftyOne here: the demo, the trainer and the
benchmarks all draw from this one module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40), "green": (45, 165, 65), "blue": (45, 85, 215), "yellow": (230, 195, 35),
    "purple": (150, 60, 175),
}
CORNERS: dict[str, int] = {"circle": 0, "triangle": 3, "square": 4, "pentagon": 5, "cross": 12}
SHAPES = tuple(CORNERS)
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "pentagon"),
                                                 ("green", "cross")})
SPLITS = {"train": 101, "val": 202, "test": 303}
QUERY_KINDS = ("referring", "spatial", "comparative", "reasoning")
SIZES = ((320, 240), (240, 320), (288, 224), (256, 256))
HELD_OUT_TARGET_SHARE = 0.3  # test split: share of scenes whose target is a held-out pair
MIN_VISIBLE = 0.45  # a shape keeps at least this share of its own area visible


@dataclass
class Shape:
    color: str
    kind: str
    centre: tuple[float, float]
    radius: float
    mask: np.ndarray = field(repr=False)  # visible area (bool, image-sized)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    query: str
    mask: np.ndarray  # (H, W) uint8, 1 = target
    kind: str  # one of QUERY_KINDS
    target: tuple[str, str]  # (colour, shape) of the target
    shapes: list[Shape] = field(repr=False)
    split: str = "train"
    index: int = 0

    @property
    def held_out(self) -> bool:
        return self.target in HELD_OUT


def make_scene(split: str, index: int, kind: str | None = None, shapes: tuple[int, int] = (3, 5)) -> Scene:
    """Scene `index` of `split`; `kind` forces the query kind (default: the kinds in turn, by index); `shapes` is
    the range of how many shapes it holds (a curriculum starts with fewer)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLITS)}")
    kind = kind or QUERY_KINDS[index % len(QUERY_KINDS)]
    if kind not in QUERY_KINDS:
        raise ValueError(f"unknown query kind {kind!r}: use one of {QUERY_KINDS}")
    rng = np.random.default_rng([SPLITS[split], index, QUERY_KINDS.index(kind), *shapes])
    size = SIZES[index % len(SIZES)]
    want_held_out = split == "test" and rng.random() < HELD_OUT_TARGET_SHARE
    for _ in range(200):
        image, drawn = _draw(rng, size, shapes, allow_held_out=split == "test")
        picked = _query(rng, drawn, kind)
        if picked is None:
            continue
        query, target = picked
        if want_held_out != ((target.color, target.kind) in HELD_OUT):
            continue
        return Scene(image, query, target.mask.astype(np.uint8), kind, (target.color, target.kind), drawn,
                     split, index)
    raise RuntimeError(f"no valid {kind} scene for {split}/{index} in 200 draws")  # never seen; kept loud


def make_scenes(split: str, count: int, start: int = 0, kind: str | None = None) -> list[Scene]:
    return [make_scene(split, i, kind) for i in range(start, start + count)]


# --- drawing ---------------------------------------------------------------------------------------------------


def _background(rng, size: tuple[int, int]) -> np.ndarray:
    """Grey-ish noise with a faint texture (stripes, checks or a gradient), never saturated like the shapes."""
    width, height = size
    base = rng.integers(95, 165) + rng.integers(-12, 13, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(3)
    if texture == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 24)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif texture == 1:
        cell = int(rng.integers(10, 28))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2 - 1.0
    else:
        pattern = (xx / width - 0.5) * 2
    pixels = base + rng.uniform(6, 16) * pattern[..., None] + rng.normal(0, 9, (height, width, 3))
    return np.clip(pixels, 0, 255)


def _outline(kind: str, centre: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]] | None:
    """The polygon of a shape (None for a circle)."""
    cx, cy = centre
    if kind == "circle":
        return None
    if kind == "cross":
        arm = radius / 3.0
        corners = [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
                   (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)]
    else:
        count = CORNERS[kind]
        offset = {3: -np.pi / 2, 4: np.pi / 4, 5: -np.pi / 2}[count]
        scale = radius * (1.0 if count != 4 else 1.25)
        corners = [(scale * np.cos(offset + 2 * np.pi * k / count), scale * np.sin(offset + 2 * np.pi * k / count))
                   for k in range(count)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _shape_layer(kind: str, centre, radius: float, angle: float, size: tuple[int, int]) -> np.ndarray:
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    polygon = _outline(kind, centre, radius, angle)
    if polygon is None:
        cx, cy = centre
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return np.asarray(layer) > 0


def _pick_kinds(rng, count: int, allow_held_out: bool) -> list[tuple[str, str]]:
    """Colour/shape pairs for a scene, with same-colour and same-shape distractors often present."""
    pairs = [(c, s) for c in COLORS for s in SHAPES if allow_held_out or (c, s) not in HELD_OUT]
    chosen = [pairs[int(rng.integers(len(pairs)))]]
    while len(chosen) < count:
        anchor = chosen[int(rng.integers(len(chosen)))]
        roll = rng.random()
        if roll < 0.3:
            options = [p for p in pairs if p[0] == anchor[0]]  # same colour
        elif roll < 0.6:
            options = [p for p in pairs if p[1] == anchor[1]]  # same shape
        else:
            options = pairs
        chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def _draw(rng, size: tuple[int, int], count: tuple[int, int], allow_held_out: bool
          ) -> tuple[np.ndarray, list[Shape]]:
    width, height = size
    pixels = _background(rng, size)
    shapes: list[Shape] = []
    full_masks: list[np.ndarray] = []
    for color, kind in _pick_kinds(rng, int(rng.integers(count[0], count[1] + 1)), allow_held_out):
        for _ in range(30):
            radius = float(rng.uniform(min(size) * 0.08, min(size) * 0.2))
            centre = (float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius)))
            layer = _shape_layer(kind, centre, radius, float(rng.uniform(0, 2 * np.pi)) if kind != "circle" else 0.0,
                                 size)
            visible_after = [s.mask & ~layer for s in shapes]
            if all(np.count_nonzero(v) >= MIN_VISIBLE * np.count_nonzero(f)
                   for v, f in zip(visible_after, full_masks)):
                break
        else:
            continue
        for shape, visible in zip(shapes, visible_after):
            shape.mask = visible
        shade = np.asarray(COLORS[color], dtype=np.float32) * rng.uniform(0.9, 1.1)
        fill = shade + rng.normal(0, 6, (height, width, 3))
        pixels[layer] = fill[layer]
        shapes.append(Shape(color, kind, centre, radius, layer))
        full_masks.append(layer)
    return np.clip(pixels, 0, 255).astype(np.uint8), shapes


# --- queries ---------------------------------------------------------------------------------------------------


def _unique(shapes: list[Shape], color: str, kind: str) -> bool:
    return sum(s.color == color and s.kind == kind for s in shapes) == 1


def _query(rng, shapes: list[Shape], kind: str) -> tuple[str, Shape] | None:
    """A query of `kind` with exactly one answer in `shapes`, or None when this scene has none."""
    if len(shapes) < 2:
        return None
    order = [shapes[i] for i in rng.permutation(len(shapes))]
    if kind == "referring":
        for target in order:
            if _unique(shapes, target.color, target.kind):
                return f"the {target.name}", target
        return None
    if kind == "spatial":
        directions = list(_DIRECTIONS)
        for anchor in order:
            if not _unique(shapes, anchor.color, anchor.kind):
                continue
            for word in (directions[i] for i in rng.permutation(len(directions))):
                hits = [s for s in shapes if s is not anchor and _DIRECTIONS[word](s, anchor)]
                if len(hits) == 1:
                    return f"the shape {word} the {anchor.name}", hits[0]
        return None
    if kind == "comparative":
        for superlative in rng.permutation(["largest", "smallest"]):
            for color in [None, *(shapes[i].color for i in rng.permutation(len(shapes)))]:
                pool = [s for s in shapes if color is None or s.color == color]
                if len(pool) < 2:
                    continue
                ranked = sorted(pool, key=lambda s: s.area, reverse=superlative == "largest")
                first, second = ranked[0].area, ranked[1].area
                if (first >= 1.3 * second) if superlative == "largest" else (second >= 1.3 * first):
                    what = f"{color} shape" if color else "shape"
                    return f"the {superlative} {what}", ranked[0]
        return None
    for most in rng.permutation(["most", "fewest"]):
        for excluded in (shapes[i].color for i in rng.permutation(len(shapes))):
            pool = [s for s in shapes if s.color != excluded]
            if len(pool) < 2:
                continue
            ranked = sorted(pool, key=lambda s: CORNERS[s.kind], reverse=most == "most")
            if CORNERS[ranked[0].kind] != CORNERS[ranked[1].kind]:
                return f"the shape with the {most} corners that is not {excluded}", ranked[0]
    return None


def _beyond(a: float, b: float, margin: float) -> bool:
    return a > b + margin


_DIRECTIONS = {
    "left of": lambda s, a: _beyond(a.centre[0], s.centre[0], a.radius),
    "right of": lambda s, a: _beyond(s.centre[0], a.centre[0], a.radius),
    "above": lambda s, a: _beyond(a.centre[1], s.centre[1], a.radius),
    "below": lambda s, a: _beyond(s.centre[1], a.centre[1], a.radius),
}
