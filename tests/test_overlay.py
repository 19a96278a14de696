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


def test_a_reused_resize_renders_the_same_view():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    mask = rng.random((90, 120)) < 0.3
    base = policy_view(image, (84, 84))
    assert np.array_equal(np.asarray(policy_view(image, (84, 84), mask, resized=base)),
                          np.asarray(policy_view(image, (84, 84), mask)))
    assert np.array_equal(np.asarray(base), np.asarray(policy_view(image, (84, 84))))  # not painted over


def test_the_loop_shows_each_step_the_view_rendered_from_scratch(tiny_segmenter):
    from scripted import ScriptedPolicy, box_answer, click_answer

    from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput

    answers = {0: box_answer([84, 84, 420, 630]), 1: click_answer(positive=[420, 420])}
    policy = ScriptedPolicy(lambda query, step, sampled: answers.get(step, click_answer()))
    image = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    (trace,) = Agent(policy, tiny_segmenter, AgentConfig(max_steps=3)).run([AgentInput(image, "the cat")])
    masks = [None] + [step.mask for step in trace.mask_steps]
    assert len(policy.images) == 3 and trace.num_steps == 2
    for shown, mask in zip(policy.images, masks):
        assert np.array_equal(np.asarray(shown), np.asarray(policy_view(image, (840, 840), mask)))
