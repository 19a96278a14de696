"""IoU bands: the one definition shared by the curation tags and the evaluation panel's filters.

Band ``i`` holds the IoUs with ``IOU_BAND_EDGES[i] <= iou < IOU_BAND_EDGES[i + 1]``; the last band also holds
an IoU of exactly 1. Ten bands of 0.1, the bins of the evaluation's IoU histogram (`ReasonSegResults.histogram`,
which the panel plots and filters by): `histogram_edges` gives the histogram these very edges (``np.linspace``
rounded to 12 decimals, so 0.3 is 0.3 and not 0.30000000000000004 in a report), so an IoU that lies exactly on
an edge falls in the same band for a tag, a bar and a filter. Anything that tags, counts or filters by band
imports these names.
"""

from __future__ import annotations

import numpy as np



def histogram_edges(bins: int) -> np.ndarray:
    """`bins` equal bins over [0, 1]: the evaluation histogram's edges (ten bins: the bands')."""
    return np.round(np.linspace(0.0, 1.0, bins + 1), 12)


IOU_BAND_EDGES: tuple[float, ...] = tuple(float(edge) for edge in histogram_edges(10))


def band_index(iou: float | None) -> int | None:
    """The band an IoU falls in (None for a missing IoU)."""
    if iou is None:
        return None
    for index in range(len(IOU_BAND_EDGES) - 2, -1, -1):
        if iou >= IOU_BAND_EDGES[index]:
            return index
    return 0


def band_bounds(index: int) -> tuple[float, float]:
    """(low, high) of band `index`."""
    return IOU_BAND_EDGES[index], IOU_BAND_EDGES[index + 1]


def band_label(index: int) -> str:
    """The band's name, e.g. ``iou 0.50-0.75``; tags are ``<eval_key>:`` followed by it."""
    low, high = band_bounds(index)
    return f"iou {low:.2f}-{high:.2f}"


def band_filter(iou_field: str, index: int):
    """A view expression selecting the samples whose `iou_field` lies in band `index` (for ``view.match``)."""
    from fiftyone import ViewField as F

    low, high = band_bounds(index)
    upper = F(iou_field) <= high if index == len(IOU_BAND_EDGES) - 2 else F(iou_field) < high
    return (F(iou_field) >= low) & upper
