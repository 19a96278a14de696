import numpy as np

from sam_veteran.plugin.agent.overlay import OverlayStyle, policy_view


def test_view_is_resized_and_mask_painted_green():
    image = np.full((100, 200, 3), 100, np.uint8)
    mask = np.zeros((100, 200), bool)
    mask[25:75, 50:150] = True
    view = np.asarray(policy_view(image, (84, 42), mask, OverlayStyle(outline=0)))
    assert view.shape == (42, 84, 3)
    inside, outside = view[21, 42], view[2, 2]
    assert tuple(outside) == (100, 100, 100)
    assert inside[1] > 150 and inside[0] < 100  # blended towards green
    assert np.asarray(policy_view(image, (84, 42))).std() == 0  # no mask: plain resize


def test_outline_marks_the_border_only():
    image = np.zeros((50, 50, 3), np.uint8)
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    view = np.asarray(policy_view(image, (50, 50), mask, OverlayStyle(alpha=0.0, outline=2)))
    assert tuple(view[10, 20]) == (0, 255, 0) and tuple(view[11, 20]) == (0, 255, 0)
    assert tuple(view[25, 25]) == (0, 0, 0)
