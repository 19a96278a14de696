"""How far ReasonSeg polygon export is from the mask it came from, pixel by pixel.

    .venv/bin/python bench/polygon_roundtrip.py [--shared ../shared/data]

For each mask: the polygons `export_reasonseg` writes are filled again (1) as LISA and `import_reasonseg` fill them
(OpenCV, points at pixel centres) and (2) as pycocotools fills COCO polygons (points at pixel corners), and the
pixels that differ from the mask are counted, as a share of the mask and of its boundary pixels, and those
farther than one pixel from the boundary (pycocotools also drops the cut lines between the hole-free pieces of a
region with holes). Masks: the demo's scenes, the real ReasonSeg annotations in the shared data, and speckled
random masks (the worst case).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sam_veteran.plugin.datasets.common import fill_polygons
from sam_veteran.plugin.datasets.polygons import mask_polygons
from sam_veteran.plugin.datasets.reasonseg import read_item
from sam_veteran.plugin.demo import SIZES, make_scene


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it."""
    return mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)


def measure(mask: np.ndarray) -> tuple[int, int, int, int, int]:
    """(mask pixels, boundary pixels, differing pixels with LISA's filling, differing with pycocotools', differing
    pixels of either filling farther than one pixel from the boundary)."""
    height, width = mask.shape
    target = mask == 1
    polygons = mask_polygons(target)
    lisa = fill_polygons([(p, 1) for p in polygons], width, height) == 1
    rles = mask_utils.frPyObjects([p.astype(float).ravel().tolist() for p in polygons], height, width)
    coco = mask_utils.decode(mask_utils.merge(rles)).astype(bool) if polygons else np.zeros_like(target)
    band = boundary(target) | boundary(~target)
    far = ((lisa != target) | (coco != target)) & ~band
    return (int(target.sum()), int(boundary(target).sum()), int((lisa != target).sum()), int((coco != target).sum()),
            int(far.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sets = {"demo scenes (40)": [make_scene(rng, SIZES[i % len(SIZES)]).mask for i in range(40)]}
    reasonseg = sorted((args.shared / "reasonseg_format").glob("*.json"))
    if reasonseg:
        sets[f"ReasonSeg annotations ({len(reasonseg)})"] = [_reasonseg_mask(p) for p in reasonseg]
    sets["speckled random 64x64 (20)"] = [(rng.random((64, 64)) < 0.5).astype(np.uint8) for _ in range(20)]
    for name, masks in sets.items():
        area, edge, lisa, coco, far = np.sum([measure(m) for m in masks], axis=0)
        print(f"{name}: {area} mask px, {edge} boundary px; differing px: LISA/importer filling {lisa} "
              f"({lisa / area:.2%} of mask), pycocotools filling {coco} ({coco / area:.2%} of mask, "
              f"{coco / edge:.0%} of boundary); farther than 1 px from the boundary: {far}")


def _reasonseg_mask(json_path: Path) -> np.ndarray:
    """A real annotation filled as LISA fills it, over a blank image that covers its coordinates."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / json_path.name
        copy.write_text(json_path.read_text())
        points = np.concatenate([np.asarray(s["points"]) for s in json.loads(json_path.read_text())["shapes"]])
        width, height = (np.ceil(points.max(axis=0)) + 10).astype(int)
        Image.new("RGB", (int(width), int(height))).save(copy.with_suffix(".jpg"))
        return read_item(copy)[3]


if __name__ == "__main__":
    main()
