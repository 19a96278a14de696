"""The simulated user's click: the interactive-segmentation field's standard protocol (RITM, SimpleClick, SAM).

Each next click goes to the interior point of the largest error region (a connected component of the misses or
of the false positives) that lies farthest from that region's boundary; it is positive when the region is a
miss and negative when it is a false positive. Pixels marked "ignore" are never an error. The image border
counts as a boundary, so a click never sits on the edge of the picture.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def next_click(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
               ) -> tuple[tuple[float, float], bool] | None:
    """((x, y) pixel centre, is_positive) of the next click, or None when the prediction has no error."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    valid = np.ones_like(gt) if ignore is None else ~np.asarray(ignore, dtype=bool)
    best = None
    for region_mask, positive in ((gt & ~pred & valid, True), (pred & ~gt & valid, False)):
        labels, count = ndimage.label(region_mask)
        if not count:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), labels == largest, positive)
    if best is None:
        return None
    _, region, positive = best
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (float(x) + 0.5, float(y) + 0.5), positive


def first_click(gt: np.ndarray) -> tuple[float, float] | None:
    """The object's interior point farthest from its boundary (the protocol's first click), or None if empty."""
    click = next_click(np.zeros_like(gt, dtype=bool), gt)
    return None if click is None else click[0]
