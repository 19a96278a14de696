"""The mini models' trainers: the batched decoder is SAM's own, a killed stage resumes where it stopped, and the
policy's training items are exactly what the agent's own prompts, view and parser produce."""

import json

import numpy as np
import pytest
import torch

from sam_veteran.plugin.agent.parsing import parse_grounding, parse_refinement
from sam_veteran.plugin.agent.segmenters import build_sam
from sam_veteran.plugin.scenes import COLORS, QUERY_KINDS, SHAPES, make_scene
from sam_veteran.trainer.mini import policy as mini_policy
from sam_veteran.trainer.mini.segmenter import (PIXEL_MEAN, PIXEL_STD, ScenePool, SegmenterTrainConfig, decode_batch,
                                                train_segmenter)


def test_batched_decoder_equals_sams_own_per_image():
    torch.manual_seed(0)
    sam = build_sam("mini")
    pool = ScenePool.build(3)
    with torch.no_grad():
        images = (torch.from_numpy(pool.images).permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_STD
        features = sam.image_encoder(images)
        boxes = torch.tensor([[10.0, 10, 100, 120], [20, 30, 200, 150], [5, 5, 50, 60]])
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        masks, ious = decode_batch(sam, features, sparse, dense)
        for i in range(3):
            one, iou = sam.mask_decoder(image_embeddings=features[i:i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse[i:i + 1],
                                        dense_prompt_embeddings=dense[i:i + 1], multimask_output=False)
            assert torch.allclose(one, masks[i:i + 1], atol=1e-5) and torch.allclose(iou, ious[i:i + 1], atol=1e-6)


@pytest.mark.slow
def test_segmenter_stage_resumes_from_its_checkpoint(tmp_path):
    config = SegmenterTrainConfig(output=str(tmp_path), steps=2, batch_size=2, pool_size=8, save_every=1,
                                  eval_scenes=2, warmup_steps=1)
    train_segmenter(config)
    config.steps = 3
    metrics = train_segmenter(config)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 3]  # steps 1-2, an evaluation, then only step 3 and its evaluation
    assert set(metrics) >= {"gt_box", "jittered_box", "click_1", "click_3", "train_seconds"}
    from sam_veteran.plugin.agent.segmenters import SamSegmenter

    SamSegmenter.from_checkpoint(tmp_path / "segmenter.safetensors", device="cpu")


def test_expert_answers_parse_as_the_agent_reads_them():
    scene = make_scene("train", 0)
    rng = np.random.default_rng(0)
    box = parse_grounding(mini_policy.grounding_answer(scene, rng, noise=0.0)).box
    size = (scene.image.shape[1], scene.image.shape[0])
    ys, xs = np.nonzero(scene.mask)
    truth = mini_policy.FAMILY.box_to_policy((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), size)
    assert np.allclose(box, np.round(truth), atol=0.51)
    stop = parse_refinement(mini_policy.refinement_answer(scene, scene.mask > 0))
    assert stop.stop
    click = parse_refinement(mini_policy.refinement_answer(scene, np.zeros_like(scene.mask, bool)))
    assert click.positive is not None and click.negative is None


def test_policy_training_items_line_up_with_the_chat(tmp_path):
    model, processor = mini_policy.build_policy()
    source = mini_policy.ItemSource(mini_policy.PolicyTrainConfig(output=str(tmp_path)))
    rng = np.random.default_rng(0)
    items = [source.item(0, row, rng) for row in range(2)]
    inputs = mini_policy.encode_batch(processor, [(r, a) for r, a, _ in items])
    tokenizer = processor.tokenizer
    for row, (_, answer, _) in enumerate(items):
        labelled = inputs["labels"][row][inputs["labels"][row] != -100]
        assert tokenizer.decode(labelled) == answer + tokenizer.eos_token
    ids = tokenizer("[12, 168]", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("12") in ids and tokenizer.convert_tokens_to_ids("168") in ids


def test_the_query_word_probe_reads_the_words_of_every_query_kind():
    for index, kind in enumerate(QUERY_KINDS):
        scene = make_scene("train", index, kind=kind)
        colour, shape = mini_policy.query_words(scene)
        words = scene.query.split()
        assert (colour is None) == (not set(words) & set(COLORS))
        assert colour is None or list(COLORS)[colour] in words
        assert shape is None or SHAPES[shape] in words
    assert mini_policy.query_words(make_scene("train", 0, kind="referring")) != (None, None)


def test_the_binding_loss_asks_every_image_token_for_the_query_colour(tmp_path):
    """A query-colour probe that names the query's colour gives a lower binding loss than one naming another."""
    torch.manual_seed(0)
    model, processor = mini_policy.build_policy()
    grid = mini_policy.FAMILY.input_size[0] // 28
    probes = mini_policy.Probes(model.config.text_config.hidden_size, grid)
    source = mini_policy.ItemSource(mini_policy.PolicyTrainConfig(output=str(tmp_path), curriculum_steps=0))
    request, answer, scene = source.item(0, 0, np.random.default_rng(0))
    inputs = mini_policy.encode_batch(processor, [(request, answer)])
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    colour = mini_policy.query_words(scene)[0]
    losses = []
    for named in (colour, (colour + 1) % len(COLORS)):
        with torch.no_grad():
            probes.query_color.weight.zero_()
            probes.query_color.bias.zero_()
            probes.query_color.bias[named] = 20.0
        losses.append(float(mini_policy._probe_losses(model, probes, outputs, inputs, [scene], grid)[1]))
    assert losses[1] - losses[0] > 5
