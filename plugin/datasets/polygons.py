"""Masks as LabelMe polygons that LISA's filling (`common.fill_polygons`) turns back into the same pixels.

A LISA polygon can only add pixels (target or ignore), never cut a background hole, so each region is first cut
into hole-free pieces: into row bands starting just below the top edge of each hole, which opens every hole to
the outside (cutting never closes a new one). Each piece's outer contour (OpenCV, through the centres of its
boundary pixels) is exactly what ``cv2.polylines`` + ``cv2.fillPoly`` draw again, and the pieces never overlap,
so the drawing order does not matter. Rasterisers that read points as pixel corners (pycocotools) differ along
the boundary only.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np


def mask_polygons(region: np.ndarray) -> list[np.ndarray]:
    """Integer (N, 2) polygons, N >= 3, in image pixels, that together fill exactly the True pixels of `region`."""
    polygons = []
    for piece, (x0, y0) in _hole_free_pieces(np.asarray(region, dtype=np.uint8)):
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            points = contour[:, 0, :] + (x0, y0)
            polygons.append(np.concatenate([points, np.repeat(points[-1:], max(0, 3 - len(points)), axis=0)]))
    return polygons


def _hole_free_pieces(region: np.ndarray) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """Hole-free parts of `region`, each cropped to its pixels, with the (x, y) offset of the crop."""
    stack = [_cropped(region, 0, 0)]
    while stack:
        part, (x0, y0) = stack.pop()
        if part is None:
            continue
        contours, hierarchy = cv2.findContours(part, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cuts = sorted({int(c[:, 0, 1].min()) + 1 for c, h in zip(contours, hierarchy[0]) if h[3] >= 0})
        if not cuts:
            yield part, (x0, y0)
            continue
        for start, stop in zip([0] + cuts, cuts + [part.shape[0]]):
            stack.append(_cropped(part[start:stop], x0, y0 + start))


def _cropped(part: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray | None, tuple[int, int]]:
    ys, xs = np.nonzero(part)
    if not len(ys):
        return None, (x0, y0)
    crop = np.ascontiguousarray(part[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return crop, (x0 + int(xs.min()), y0 + int(ys.min()))
