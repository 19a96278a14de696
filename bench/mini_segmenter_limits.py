"""Where the mini segmenter's refinement stops: its output resolution, or what it learned.

Side by side on the test split's scenes: (1) the resolution ceiling, the IoU of the ground truth after a round
trip through SAM's 64x64 low-resolution mask (area-downsampled in SAM's input frame, upsampled back the way
`SamSegmenter` upsamples its logits), the best any segmenter of this architecture could reach; (2) the mini
segmenter's IoU from the ground truth's box and after 1, 2, 3, 5, 10 and 20 simulated-user clicks
(`clicks.next_click`, the previous logits fed back), with NoC@85 / NoC@90 and the box-only IoU by shape.
One torch thread; prints a short table, then the JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from sam_veteran.plugin.agent.clicks import next_click
from sam_veteran.plugin.agent.segmenters import load_segmenter
from sam_veteran.plugin.metrics import NOC_CAP, mean_clicks_to_reach
from sam_veteran.plugin.scenes import make_scene
from sam_veteran.trainer.rewards import mask_box, mask_iou

IMAGE_SIZE, LOW_RES = 256, 64
CLICKS_SHOWN = (0, 1, 2, 3, 5, 10, NOC_CAP)


def resolution_ceiling(gt: np.ndarray) -> float:
    """IoU of `gt` after the round trip through a LOW_RES x LOW_RES mask in SAM's padded input frame."""
    height, width = gt.shape
    h, w = ResizeLongestSide(IMAGE_SIZE).get_preprocess_shape(height, width, IMAGE_SIZE)
    frame = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask = torch.from_numpy(gt.astype(np.float32))[None, None]
    frame[..., :h, :w] = F.interpolate(mask, (h, w), mode="bilinear", align_corners=False)
    logits = F.interpolate(frame, (LOW_RES, LOW_RES), mode="area") * 2 - 1
    up = F.interpolate(logits, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)[..., :h, :w]
    back = F.interpolate(up, (height, width), mode="bilinear", align_corners=False)[0, 0].numpy() > 0
    return mask_iou(back, gt)


def click_curve(segmenter, scene, clicks: int) -> list[float]:
    """IoU from the GT box, then after each simulated-user click."""
    gt = scene.mask > 0
    embedding = segmenter.encode([scene.image])[0]
    box = mask_box(gt)
    result = segmenter.segment(embedding, box)
    ious, points, labels = [mask_iou(result.mask, gt)], [], []
    for _ in range(clicks):
        picked = next_click(result.mask, gt)
        if picked is not None:
            points.append(picked[0])
            labels.append(int(picked[1]))
            result = segmenter.segment(embedding, box, points, labels, result.logits)
        ious.append(mask_iou(result.mask, gt))
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segmenter", default="mini")
    parser.add_argument("--scenes", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    segmenter = load_segmenter(args.segmenter, device="cpu")
    ceilings, curves, by_shape = [], [], {}
    for index in range(args.scenes):
        scene = make_scene("test", index)
        ceilings.append(resolution_ceiling(scene.mask > 0))
        curves.append(click_curve(segmenter, scene, max(CLICKS_SHOWN)))
        by_shape.setdefault(scene.target[1], []).append(curves[-1][0])
    curve = np.mean(curves, axis=0)
    sessions = [(c, range(len(c))) for c in curves]  # one click per step after the box
    summary = {
        "scenes": args.scenes, "segmenter": args.segmenter,
        "resolution_ceiling": round(float(np.mean(ceilings)), 3),
        "resolution_ceiling_share_at_0.90": round(float(np.mean(np.array(ceilings) >= 0.9)), 3),
        "iou_after_clicks": {str(k): round(float(curve[k]), 3) for k in CLICKS_SHOWN},
        "noc85": round(mean_clicks_to_reach(sessions, 0.85), 2),
        "noc90": round(mean_clicks_to_reach(sessions, 0.90), 2),
        "gt_box_iou_by_shape": {shape: round(float(np.mean(v)), 3) for shape, v in sorted(by_shape.items())},
    }
    print(f"resolution ceiling (64x64 low-res mask): {summary['resolution_ceiling']} "
          f"({summary['resolution_ceiling_share_at_0.90']:.0%} of scenes at IoU >= 0.90)")
    print("clicks  " + "  ".join(f"{k:>5}" for k in CLICKS_SHOWN))
    print("IoU     " + "  ".join(f"{curve[k]:5.3f}" for k in CLICKS_SHOWN))
    print(f"NoC@85 {summary['noc85']}  NoC@90 {summary['noc90']}  GT-box IoU by shape {summary['gt_box_iou_by_shape']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
