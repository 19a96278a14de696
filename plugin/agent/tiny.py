"""Tiny random-weight models built locally, for tests, CI and offline smoke runs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on the prompts themselves, carrying
Qwen's special tokens; the policy is a real Qwen2.5-VL / Qwen2-VL / Qwen3-VL architecture shrunk to a few hundred
thousand parameters; the segmenter is a real segment-anything `Sam` at image size 256, and SAM 2 a real
transformers `Sam2Model` (Hiera encoder, four stages) at image size 256. They load through the same code paths as
the real checkpoints (`from_pretrained`, `SamSegmenter.from_checkpoint`, `Sam2Segmenter.from_pretrained`). Their
answers are random: they exercise the machinery, not the method.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..defaults import TINY_FAMILIES, cache_dir
from .prompts import FAMILIES
from .segmenters.sam import build_sam

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_POLICY_DIRNAME = "policy-{family}"
TINY_SEGMENTER_FILENAME = "sam_tiny.safetensors"
TINY_SAM2_DIRNAME = "sam2-tiny"
TINY_SAM2_IMAGE_SIZE = 256


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on this package's prompts and answer format, with Qwen's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for family in FAMILIES.values():
        corpus += [family.grounding_prompt("the red cup on the left"), family.refine_prompt("the dog")]
    corpus += ['<think>the object is here</think><answer>{"bbox_2d": [12, 40, 300, 512]}</answer>',
               '<answer>{"positive_point": [120, 45], "negative_point": null}</answer>', "0123456789 ,.[]{}:"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_policy(family: str = "qwen2_5_vl", seed: int = 0):
    """A (model, processor) pair of the given family with random weights."""
    from transformers import (AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2_5_VLProcessor,
                              Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen3VLConfig,
                              Qwen3VLProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32)
    if family == "qwen3_vl":
        patch = 16
        config = Qwen3VLConfig(
            text_config=dict(text, head_dim=16, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                     mrope_section=[2, 3, 3], mrope_interleaved=True)),
            vision_config=dict(vision, patch_size=patch, num_position_embeddings=256, deepstack_visual_indexes=[0]),
            **token_ids)
        processor_cls, video_cls = Qwen3VLProcessor, Qwen3VLVideoProcessor
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        patch = 14
        rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])
        if family == "qwen2_5_vl":
            config = Qwen2_5_VLConfig(text_config=dict(text, rope_parameters=rope),
                                      vision_config=dict(vision, patch_size=patch, window_size=56,
                                                         fullatt_block_indexes=[1]), **token_ids)
            processor_cls = Qwen2_5_VLProcessor
        else:
            config = Qwen2VLConfig(text_config=dict(text, rope_parameters=rope),
                                   vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2,
                                                      mlp_ratio=2, patch_size=patch), **token_ids)
            processor_cls = Qwen2VLProcessor
        video_cls = Qwen2VLVideoProcessor
    else:
        raise ValueError(f"no tiny recipe for family {family!r}; choose one of {sorted(FAMILIES)}")
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    vision_tokens = [ids[t] for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                                      "<|vision_pad|>")]
    model.generation_config.suppress_tokens = vision_tokens
    model.generation_config.bos_token_id = text["bos_token_id"]
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = text["pad_token_id"]
    image_processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, min_pixels=(patch * 2) ** 2 * 4,
                                            max_pixels=(patch * 2) ** 2 * 64)
    video_processor = video_cls(patch_size=patch, merge_size=2)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                              chat_template=CHAT_TEMPLATE)
    return model, processor


def build_tiny_sam2(seed: int = 0, image_size: int = TINY_SAM2_IMAGE_SIZE):
    """A (Sam2Model, Sam2Processor) pair with random weights: the released layout (three feature levels, the
    decoder's high-resolution skips, the stability fallback) shrunk to about 0.1M parameters."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    levels = [[image_size // stride] * 2 for stride in (4, 8, 16)]
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, image_size=[image_size, image_size],
                    blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                    num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 4, 4],
                    # a global block must not open a stage: Hiera pools queries there
                    global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4])
    config = Sam2Config(
        vision_config=dict(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                           backbone_feature_sizes=levels, fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    torch.manual_seed(seed)
    model = Sam2Model(config).eval()
    processor = Sam2Processor(Sam2ImageProcessor(size={"height": image_size, "width": image_size},
                                                 mask_size={"height": image_size // 4, "width": image_size // 4}))
    return model, processor


def write_tiny_models(directory: str | os.PathLike, families: tuple[str, ...] = TINY_FAMILIES,
                      seed: int = 0) -> dict[str, Path]:
    """Write tiny policies (one folder per family), a tiny SAM checkpoint and a tiny SAM 2 folder into `directory`.

    Returns the paths: ``{"segmenter": ..., "segmenter-sam2": ..., "policy-qwen2_5_vl": ..., ...}``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for family in families:
        model, processor = build_tiny_policy(family, seed=seed)
        target = directory / TINY_POLICY_DIRNAME.format(family=family)
        model.save_pretrained(target)
        processor.save_pretrained(target)
        paths[target.name] = target
    torch.manual_seed(seed)
    sam = build_sam("tiny")
    segmenter_path = directory / TINY_SEGMENTER_FILENAME
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(segmenter_path))
    paths["segmenter"] = segmenter_path
    model, processor = build_tiny_sam2(seed=seed)
    model.save_pretrained(directory / TINY_SAM2_DIRNAME)
    processor.save_pretrained(directory / TINY_SAM2_DIRNAME)
    paths["segmenter-sam2"] = directory / TINY_SAM2_DIRNAME
    return paths


def tiny_model_paths(directory: Path | None = None) -> tuple[str, str]:
    """(policy folder, segmenter checkpoint) of the tiny models in `directory` (default: the cache's ``tiny/``),
    written on first use: what ``--tiny`` runs on (demo, run, train)."""
    directory = directory or cache_dir() / "tiny"
    policy = directory / TINY_POLICY_DIRNAME.format(family="qwen2_5_vl")
    segmenter = directory / TINY_SEGMENTER_FILENAME
    if not (policy / "config.json").exists() or not segmenter.exists():
        write_tiny_models(directory)
    return str(policy), str(segmenter)
