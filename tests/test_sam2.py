"""SAM 2 through transformers behind the Segmenter protocol, and `load_segmenter` picking the backend."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_veteran.plugin.agent import (Action, Agent, AgentConfig, AgentInput, EndReason, Sam2Segmenter,
                                      SamSegmenter, load_segmenter)
from sam_veteran.plugin.agent.segmenters import build_sam, segmenter_kind
from sam_veteran.plugin.agent.tiny import TINY_SAM2_IMAGE_SIZE, build_tiny_sam2
from scripted import ScriptedPolicy, box_answer, click_answer

SIZE = TINY_SAM2_IMAGE_SIZE


def _image(height=300, width=400, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sam2(tiny_models):
    return Sam2Segmenter.from_pretrained(tiny_models["segmenter-sam2"], device="cpu")


@pytest.fixture
def encoder_calls(sam2):
    calls = []
    handle = sam2.model.vision_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    yield calls
    handle.remove()


@pytest.fixture
def prompts_seen(sam2):
    """What the prompt encoder receives: boxes and points on SAM 2's square input, and whether a mask came in."""
    seen = []
    handle = sam2.model.prompt_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    yield seen
    handle.remove()


def test_tiny_folder_holds_the_model_it_was_built_from(tiny_models, sam2):
    built, _ = build_tiny_sam2(seed=0)
    loaded = sam2.model.state_dict()
    assert built.state_dict().keys() == loaded.keys()
    assert all(torch.equal(value, loaded[key]) for key, value in built.state_dict().items())
    assert sam2.processor.target_size == SIZE


@pytest.mark.parametrize("height,width", [(90, 160), (240, 60), (1, 1), (3, 7)])
def test_masks_come_back_at_original_size(sam2, height, width):
    (embedding,) = sam2.encode([_image(height, width)])
    result = sam2.segment(embedding, (0, 0, width, height))
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    assert 0.0 <= result.score <= 1.0
    assert result.logits.shape == (1, 1, SIZE // 4, SIZE // 4)
    # SAM 2 stretches the image to a square, so the low-res logits cover the whole image: no padding to crop
    stretched = F.interpolate(result.logits, (height, width), mode="bilinear", align_corners=False)[0, 0] > 0
    assert np.array_equal(result.mask, stretched.numpy())


def test_boxes_and_clicks_reach_the_model_on_its_square_input(sam2, prompts_seen):
    (embedding,) = sam2.encode([_image(90, 160)])
    sam2.segment(embedding, (16, 9, 80, 45), [(40, 18), (160, 90)], [1, 0])
    (seen,) = prompts_seen
    sx, sy = SIZE / 160, SIZE / 90
    torch.testing.assert_close(seen["input_boxes"], torch.tensor([[[16 * sx, 9 * sy, 80 * sx, 45 * sy]]]))
    torch.testing.assert_close(seen["input_points"], torch.tensor([[[[40 * sx, 18 * sy], [160 * sx, 90 * sy]]]]))
    assert seen["input_labels"].tolist() == [[[1, 0]]] and seen["input_masks"] is None


def test_refinement_uses_the_clicks_and_the_previous_logits(sam2, prompts_seen):
    (embedding,) = sam2.encode([_image(90, 160)])
    box = (10, 10, 100, 80)
    first = sam2.segment(embedding, box)
    clicked = sam2.segment(embedding, box, [(50, 40), (20, 20)], [1, 0])
    refined = sam2.segment(embedding, box, [(50, 40), (20, 20)], [1, 0], first.logits)
    assert refined.mask.shape == (90, 160) and refined.logits.shape == first.logits.shape
    assert prompts_seen[2]["input_masks"] is first.logits
    assert not torch.equal(clicked.logits, first.logits)  # the clicks change the answer
    assert not torch.equal(refined.logits, clicked.logits)  # and so does the previous mask


def test_batched_encoding_matches_one_at_a_time(sam2, encoder_calls):
    images = [_image(h, w, seed) for seed, (h, w) in enumerate([(50, 80), (120, 60), (64, 64)])]
    together = sam2.encode(images)
    assert encoder_calls == [3]
    for image, embedding in zip(images, together):
        (alone,) = sam2.encode([image])
        assert alone.original_size == embedding.original_size == image.shape[:2]
        for level_alone, level_together in zip(alone.features, embedding.features):
            torch.testing.assert_close(level_alone, level_together, rtol=1e-4, atol=1e-5)
        box = (5, 5, image.shape[1] - 5, image.shape[0] - 5)
        assert np.array_equal(sam2.segment(alone, box).mask, sam2.segment(embedding, box).mask)


def test_agent_runs_end_to_end_encoding_each_image_once(sam2, encoder_calls):
    def answers(query, step, sampled):
        if step == 0:
            return box_answer([84, 84, 420, 630])
        if query == "the cat":
            return {1: click_answer(positive=[420, 420]),
                    2: click_answer(positive=[100, 100], negative=[700, 700])}.get(step, click_answer())
        return click_answer(negative=[10, 10])

    policy = ScriptedPolicy(answers)
    items = [AgentInput(_image(), "the cat"), AgentInput(_image(120, 200, seed=1), "the dog")]
    cat, dog = Agent(policy, sam2, AgentConfig(max_steps=3)).run(items)
    assert encoder_calls == [2]  # one batched pass for both images, however many steps
    assert [s.action for s in cat.steps] == [Action.BOX, Action.POSITIVE, Action.POSITIVE_AND_NEGATIVE,
                                              Action.STOP]
    assert cat.end_reason is EndReason.AGENT_STOPPED and dog.end_reason is EndReason.STEP_CAP
    assert cat.box == pytest.approx((40, 30, 200, 225))
    assert cat.mask.shape == (300, 400) and dog.mask.shape == (120, 200) and dog.num_steps == 4
    assert all(0.0 <= s.score <= 1.0 for t in (cat, dog) for s in t.mask_steps)


def test_agent_from_pretrained_takes_a_sam2_folder(tiny_models):
    agent = Agent.from_pretrained(str(tiny_models["policy-qwen2_5_vl"]), str(tiny_models["segmenter-sam2"]),
                                  AgentConfig(max_steps=1, parse_retries=0, input_size=(112, 112)), device="cpu",
                                  max_new_tokens=8)
    assert isinstance(agent.segmenter, Sam2Segmenter)
    (trace,) = agent.run([AgentInput(_image(60, 80), "the cat")])
    assert trace.end_reason is not None and trace.image_size == (80, 60)


def test_the_sdk_model_takes_a_sam2_folder(tiny_models):
    from sam_veteran.plugin.model import SamVeteranModel

    model = SamVeteranModel(policy=str(tiny_models["policy-qwen2_5_vl"]), segmenter=str(tiny_models["segmenter-sam2"]),
                            device="cpu", max_new_tokens=8)
    assert isinstance(model.agent.segmenter, Sam2Segmenter)


def test_load_segmenter_picks_the_backend(tiny_models, tmp_path):
    assert isinstance(load_segmenter(tiny_models["segmenter"], device="cpu"), SamSegmenter)
    torch.save(build_sam("tiny").state_dict(), tmp_path / "sam.pth")
    assert isinstance(load_segmenter(tmp_path / "sam.pth", device="cpu"), SamSegmenter)
    assert isinstance(load_segmenter(str(tiny_models["segmenter-sam2"]), device="cpu"), Sam2Segmenter)
    # model types and hub ids are recognised without loading (loading them would download)
    assert [segmenter_kind(name) for name in ("vit_h", "vit_l", "vit_b")] == ["sam"] * 3
    assert [segmenter_kind(name) for name in ("facebook/sam2.1-hiera-large", "facebook/sam2-hiera-tiny",
                                              "someone/SAM2.1-finetuned")] == ["sam2"] * 3


def test_a_released_sam2_video_checkpoint_loads_its_image_model(tmp_path):
    """The hub's facebook/sam2* repositories hold `sam2_video` models; their image-model weights are what we use."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    model, processor = build_tiny_sam2(seed=1)
    parts = model.config.to_dict()
    config = Sam2VideoConfig(vision_config=parts["vision_config"], prompt_encoder_config=parts["prompt_encoder_config"],
                             mask_decoder_config=parts["mask_decoder_config"], image_size=SIZE,
                             memory_attention_hidden_size=32, memory_encoder_hidden_size=32, memory_fuser_embed_dim=32,
                             mask_downsampler_embed_dim=32, memory_encoder_output_channels=16,
                             memory_attention_num_layers=1)
    video = Sam2VideoModel(config)
    video.save_pretrained(tmp_path / "video")
    processor.save_pretrained(tmp_path / "video")
    segmenter = load_segmenter(tmp_path / "video", device="cpu")
    assert isinstance(segmenter, Sam2Segmenter)
    released = video.state_dict()
    assert all(torch.equal(value, released[key]) for key, value in segmenter.model.state_dict().items())
    (embedding,) = segmenter.encode([_image(30, 40)])
    assert segmenter.segment(embedding, (0, 0, 40, 30)).mask.shape == (30, 40)


def test_bad_specs_are_explained(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="unknown segmenter 'sam-large'.*vit_h.*SAM 2 folder.*facebook/sam2.1"):
        load_segmenter("sam-large")
    with pytest.raises(ValueError, match="not a SAM 2 model \\(no config.json\\)"):
        load_segmenter(tmp_path)
    with pytest.raises(ValueError, match="not a SAM 2 model \\(model_type 'qwen2_5_vl'"):
        load_segmenter(tiny_models["policy-qwen2_5_vl"])
    with pytest.raises(ValueError, match="'qwen2_5_vl' model, not SAM 2"):
        Sam2Segmenter.from_pretrained(tiny_models["policy-qwen2_5_vl"])
    with pytest.raises(FileNotFoundError, match="vit_h"):
        load_segmenter("/nowhere/sam.pth")


def test_pickled_weights_are_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "processor_config.json"):
        shutil.copy(tiny_models["segmenter-sam2"] / name, folder / name)
    torch.save(build_tiny_sam2()[0].state_dict(), folder / "pytorch_model.bin")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam2"
    with pytest.raises(OSError, match="safetensors"):
        load_segmenter(folder, device="cpu")
