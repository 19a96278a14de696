"""Agent labels made from hand-written traces with known IoUs, for the evaluation and panel tests.

A: IoU 0.6 then 1.0, stopped by the agent; B: 0.5, 2/3, 0.5, 0.9 to the step cap; C: no result (an unreadable
image); D: empty target, empty mask, stopped at once. A and C are sentences, B and D phrases.
"""

import fiftyone as fo
import numpy as np
from PIL import Image

from sam_veteran.plugin.agent.trace import Action, EndReason, Step, Trace
from sam_veteran.plugin.labels import failure_labels, trace_to_labels

W, H = 10, 8


def _mask(rows, cols):
    mask = np.zeros((H, W), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def _trace(masks, end_reason):
    steps = [Step(i, "", Action.BOX if i == 0 else Action.POSITIVE, box=(0, 0, 2, 2), mask=m)
             for i, m in enumerate(masks)]
    if end_reason is EndReason.AGENT_STOPPED:
        steps.append(Step(len(masks), "", Action.STOP))
    return Trace("q", (W, H), steps, end_reason)


def _gt(target=None, ignore=None):
    gt = np.zeros((H, W), np.uint8)
    if target is not None:
        gt[target] = 1
    if ignore is not None:
        gt[ignore] = 255
    return fo.Segmentation(mask=gt)


def make_agent_dataset(tmp_path) -> fo.Dataset:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    items = [
        (True, _gt(_mask((2, 6), (2, 7))), _gt(ignore=_mask((2, 6), (7, 8))).mask,
         trace_to_labels(_trace([_mask((2, 6), (2, 5)), _mask((2, 6), (2, 8))], EndReason.AGENT_STOPPED))),
        (False, _gt(_mask((0, 2), (0, 10))), None,
         trace_to_labels(_trace([_mask((0, 4), (0, 10)), _mask((0, 3), (0, 10)), _mask((0, 2), (0, 5)),
                                 _mask((0, 2), (0, 9))], EndReason.STEP_CAP))),
        (True, _gt(_mask((4, 8), (0, 5))), None, failure_labels("cannot read image")),
        (False, _gt(), None, trace_to_labels(_trace([np.zeros((H, W), bool)], EndReason.AGENT_STOPPED))),
    ]
    dataset = fo.Dataset()
    samples = []
    for is_sentence, gt, ignore, labels in items:
        if ignore is not None:
            gt.mask[ignore == 255] = 255
        samples.append(fo.Sample(filepath=str(path), is_sentence=is_sentence, ground_truth=gt,
                                 veteran_mask=labels["mask"], veteran_steps=labels["steps"]))
    dataset.add_samples(samples)
    return dataset
