"""The mini policy: a small Qwen2.5-VL built here, and its supervised warm-up on expert traces of the scenes.

Localising from scratch is the hard part for a model this small, so the recipe gives it every help that leaves
the architecture and the agent untouched:

- the `mini` family (prompts.py): a 168x168 view (36 image tokens after Qwen2.5-VL's 2x2 merge), short prompts;
- coordinates are single tokens: the tokenizer holds one token per integer 0..168, whose embeddings (tied with
  the output layer) start as smooth functions of the value, so neighbouring coordinates start out neighbours;
- coordinates are also scored as numbers, not only as classes: a cross-entropy against a Gaussian around the
  target value (`coordinate_sigma` pixels) and the L1 error of the expected value, over the coordinate tokens
  (a near miss earns partial credit; with exact-token cross-entropy alone the loss stayed at the uniform
  guess's for 500 steps);
- auxiliary losses while warming up only (linear probes, dropped afterwards): each image token's row and column
  from the language model's hidden state after `PROBE_LAYER` layers (Qwen2.5-VL's vision tower has rotary
  positions only, so absolute position must be built in the language model, from the image's start token), and
  the colour and shape under each token from the vision tower's output; and, weighted apart (`binding_weight`),
  binding probes at the same layer: every image token must carry the query's colour and shape words
  (`query_words`), and each shape token: is it the query's target, do its colour and its shape occur in the query
  (`mention_labels`). The query-word probe is what made the policy bind: without it the image tokens held their
  own colour (a linear probe: 0.98) but not the query's (0.36-0.44, chance 0.20; `bench/mini_binding.py`), and the
  policy boxed the same shape whichever of two shapes it was asked for;
- a pointer loss: one attention head of layer `POINTER_LAYER`, at the positions that predict a box coordinate, is
  asked to attend to the target's image tokens. Without it the read-out stays on a plateau (uniform attention
  makes the attended value the image's average, so nothing tells the head where to look): seen here for 900
  steps with the probes above already solved;
- a curriculum: two-shape referring scenes first, then every query kind with three to five shapes.

The expert answers are what the agent itself must emit (the family's prompts, `policy_view`, `messages` and the
chat template: what is trained is what runs): the grounding step answers the ground truth's box with a little
noise; refinement steps (on the mini segmenter's masks from noisy boxes of the target or of another shape) answer
the simulated user's click (`clicks.next_click`) or stop when the mask is good enough (`refinement_answer`). Checkpoints (`state.pt`: model, probes, optimiser, step) make the run resumable; `policy/` is a
`from_pretrained` folder with its family recorded (`prompts.record_family`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...plugin.agent.clicks import next_click
from ...plugin.agent.oracle import GOOD_ENOUGH_IOU
from ...plugin.agent.overlay import policy_view
from ...plugin.agent.policy import PolicyRequest, messages
from ...plugin.agent.prompts import FAMILIES, ModelFamily, record_family
from ...plugin.agent.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
from ...plugin.scenes import COLORS, QUERY_KINDS, SHAPES, Scene, make_scene
from ..rewards import box_iou, mask_box, mask_iou

FAMILY: ModelFamily = FAMILIES["mini"]
PROBE_LAYER = 2
WRONG_BOX_SHARE = 0.4  # refinement items whose mask comes from another shape's box
FAIR_IOU = 0.75  # ... when the mask's IoU is at least this
MIN_CLICK_GAIN = 0.01  # the expert stops when the simulated user's next click would add less IoU than this
POINTER_LAYER = 2  # reads the hidden states the probes shape (hidden_states[PROBE_LAYER])


@dataclass
class PolicyTrainConfig:
    output: str
    steps: int = 6000
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    curriculum_steps: int = 800  # two-shape referring scenes first
    refine_share: float = 0.0  # share of refinement items (needs the mini segmenter)
    segmenter: str | None = None
    probe_weight: float = 0.3
    binding_weight: float = 3.0  # the probes that bind the query to the image tokens (query words, target, mentioned)
    coordinate_weight: float = 1.0
    pointer_weight: float = 0.5
    coordinate_sigma: float = 2.0
    box_noise: float = 1.5  # std of the expert box's noise, in pixels of the policy's view
    save_every: int = 200
    eval_every: int = 500
    eval_scenes: int = 48
    seed: int = 0
    threads: int = 1
    model: dict = field(default_factory=dict)  # overrides of the architecture (see `build_config`)


# --- tokenizer and model ---------------------------------------------------------------------------------------


def coordinate_tokens(family: ModelFamily = FAMILY) -> list[str]:
    width, height = family.input_size
    return [str(i) for i in range(max(width, height) + 1)]


def build_tokenizer(family: ModelFamily = FAMILY):
    """A byte-level BPE trained on the mini prompts, the scenes' words and the answers, with Qwen's special tokens
    and one token per coordinate value."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = list(COLORS) + list(SHAPES) + ["shape", "left of", "right of", "above", "below", "largest", "smallest",
                                           "with the most corners that is not", "fewest", "the"]
    chat = CHAT_TEMPLATE.replace("{%", "").replace("%}", "")
    corpus = [family.grounding_prompt(" ".join(words)), family.refine_prompt("the red circle"), " ".join(words) * 3,
              f"<|im_start|>system\n{family.system_prompt}<|im_end|>\n<|im_start|>user\n", "<|im_start|>assistant\n",
              chat] * 4
    corpus += [expert_text("grounding", "the red circle", (1, 2, 3, 4)),
               expert_text("refine", "the red circle", None, (5, 6), None),
               expert_text("refine", "the red circle", None, None, (5, 6)),
               expert_text("refine", "the red circle", None, None, None)] * 4
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, padding_side="left")
    fast.add_tokens(coordinate_tokens(family))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer, **overrides):
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    sizes = dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768, vision_hidden=128, vision_depth=4,
                 vision_heads=4, vision_intermediate=512)
    sizes.update(overrides)
    head_dim = sizes["hidden"] // sizes["heads"]
    quarter = head_dim // 2 // 4
    text = dict(vocab_size=len(tokenizer), hidden_size=sizes["hidden"], intermediate_size=sizes["intermediate"],
                num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                num_key_value_heads=sizes["kv_heads"], max_position_embeddings=1024, tie_word_embeddings=True,
                rope_parameters=dict(rope_type="default", rope_theta=1000.0,
                                     mrope_section=[head_dim // 2 - 3 * quarter, quarter * 3 // 2,
                                                    3 * quarter - quarter * 3 // 2]),
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=sizes["vision_depth"], hidden_size=sizes["vision_hidden"],
                  intermediate_size=sizes["vision_intermediate"], num_heads=sizes["vision_heads"],
                  out_hidden_size=sizes["hidden"], patch_size=14, window_size=84,
                  fullatt_block_indexes=[sizes["vision_depth"] // 2 - 1, sizes["vision_depth"] - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_policy(seed: int = 0, family: ModelFamily = FAMILY, **overrides):
    """An untrained mini policy: (model, processor)."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = build_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(build_config(tokenizer, **overrides))
    _smooth_coordinate_embeddings(model, tokenizer, family)
    vision_tokens = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if "vision" in t or "pad|" in t]
    model.generation_config.suppress_tokens = [t for t in vision_tokens if t != tokenizer.pad_token_id]
    model.generation_config.bos_token_id = model.config.text_config.bos_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    pixels = family.input_size[0] * family.input_size[1]
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=pixels, max_pixels=pixels)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
                                    chat_template=CHAT_TEMPLATE)
    return model, processor


@torch.no_grad()
def _smooth_coordinate_embeddings(model, tokenizer, family: ModelFamily) -> None:
    """Start each coordinate token's embedding as sinusoids of its value (plus the usual small noise)."""
    embeddings = model.get_input_embeddings().weight
    dim = embeddings.shape[1]
    values = torch.arange(len(coordinate_tokens(family)), dtype=torch.float32)[:, None]
    frequencies = torch.exp(torch.linspace(math.log(1 / 256), math.log(1 / 2), dim // 2))[None]
    features = torch.cat([torch.sin(values * frequencies * 2 * math.pi),
                          torch.cos(values * frequencies * 2 * math.pi)], dim=1) * 0.05
    ids = tokenizer.convert_tokens_to_ids(coordinate_tokens(family))
    embeddings[ids] = features + 0.3 * embeddings[ids]


def save_policy(model, processor, directory: Path, family: str = "mini") -> None:
    """A `from_pretrained` folder, weights in bfloat16 (half the size; loading upcasts), family recorded."""
    import copy

    directory.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(directory)
    processor.save_pretrained(directory)
    record_family(directory, family)


# --- expert answers --------------------------------------------------------------------------------------------


def _fmt(values) -> str:
    return ", ".join(str(int(round(v))) for v in values)


def expert_text(kind: str, query: str, box=None, positive=None, negative=None) -> str:
    """The answer text the agent must produce (coordinates already in the policy's grid)."""
    if kind == "grounding":
        return f"<think>Found it.</think><answer>{{\"bbox_2d\": [{_fmt(box)}]}}</answer>"
    if positive is None and negative is None:
        why = "The mask fits the object."
    elif negative is None:
        why = "The mask misses part of the object."
    elif positive is None:
        why = "The mask covers something else."
    else:
        why = "The mask misses part and covers something else."
    point = lambda p: "null" if p is None else f"[{_fmt(p)}]"  # noqa: E731
    return (f"<think>{why}</think><answer>{{\"positive_point\": {point(positive)}, "
            f"\"negative_point\": {point(negative)}}}</answer>")


def grounding_answer(scene: Scene, rng, noise: float, family: ModelFamily = FAMILY) -> str:
    size = (scene.image.shape[1], scene.image.shape[0])
    box = np.asarray(family.box_to_policy(mask_box(scene.mask > 0), size)) + rng.normal(0, noise, 4)
    grid = family.grid_size
    box = np.clip(box, 0, [grid[0], grid[1], grid[0], grid[1]])
    return expert_text("grounding", scene.query, box)


def refinement_answer(scene: Scene, shown: np.ndarray, family: ModelFamily = FAMILY,
                      click_gain=None) -> str:
    """The simulated user's answer for the mask `shown`: its next click, or stop when the mask is good enough:
    IoU at least `GOOD_ENOUGH_IOU`, or at least `FAIR_IOU` with a click that (given `click_gain`, the IoU a click
    would add) would not add `MIN_CLICK_GAIN`. A small segmenter's masks rarely reach 0.9, and an expert that never
    stops teaches the paper's failure mode; one that stops whenever a click fails to help would stop on wrong
    objects too."""
    size = (scene.image.shape[1], scene.image.shape[0])
    gt = scene.mask > 0
    iou = mask_iou(shown, gt)
    if iou >= GOOD_ENOUGH_IOU:
        return expert_text("refine", scene.query)
    click = next_click(shown, gt)
    if click is None or (click_gain is not None and iou >= FAIR_IOU and click_gain(click) < MIN_CLICK_GAIN):
        return expert_text("refine", scene.query)
    xy = family.to_policy(click[0], size)
    return expert_text("refine", scene.query, positive=xy if click[1] else None, negative=None if click[1] else xy)


# --- training --------------------------------------------------------------------------------------------------


class Probes(torch.nn.Module):
    """Training-only linear read-outs: row, column and "is this the query's target" from the language model (the
    image tokens see the query: the family puts it first), colour and shape from the vision tower, and the
    target's box at the position that starts writing it."""

    def __init__(self, hidden: int, grid: int) -> None:
        super().__init__()
        self.row = torch.nn.Linear(hidden, grid)
        self.col = torch.nn.Linear(hidden, grid)
        self.target = torch.nn.Linear(hidden, 2)
        self.box = torch.nn.Linear(hidden, 4)
        self.color = torch.nn.Linear(hidden, len(COLORS) + 1)
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)
        self.mentioned = torch.nn.Linear(hidden, 2)  # does the token's colour / shape occur in the query?
        self.query_color = torch.nn.Linear(hidden, len(COLORS))  # the query's colour and shape words, from every
        self.query_shape = torch.nn.Linear(hidden, len(SHAPES))  # image token (`query_words`)


def token_labels(scene: Scene, family: ModelFamily, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour and shape index (0 = background) under each merged image token, by majority of its pixels, and
    whether the target covers any of its pixels."""
    height, width = scene.mask.shape
    colour = np.zeros((grid, grid), dtype=np.int64)
    shape = np.zeros((grid, grid), dtype=np.int64)
    target = np.zeros((grid, grid), dtype=np.int64)
    owner = np.full((height, width), -1)
    for k, s in enumerate(scene.shapes):
        owner[s.mask] = k
    ys = np.linspace(0, height, grid + 1).astype(int)
    xs = np.linspace(0, width, grid + 1).astype(int)
    for r in range(grid):
        for c in range(grid):
            cell = owner[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].ravel()
            target[r, c] = int(scene.mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].any())
            counts = np.bincount(cell + 1, minlength=len(scene.shapes) + 1)
            k = int(np.argmax(counts)) - 1
            if k >= 0:
                colour[r, c] = list(COLORS).index(scene.shapes[k].color) + 1
                shape[r, c] = SHAPES.index(scene.shapes[k].kind) + 1
    return colour.ravel(), shape.ravel(), target.ravel()


def query_words(scene: Scene) -> tuple[int | None, int | None]:
    """The index of the query's colour word and of its shape word (None where it has none; a query names at most
    one of each)."""
    words = scene.query.split()
    colour = next((k for k, c in enumerate(COLORS) if c in words), None)
    return colour, next((k for k, s in enumerate(SHAPES) if s in words), None)


def mention_labels(scene: Scene, colour: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Per image token (labels as `token_labels` gives them, 0 = background), whether its colour and its shape
    are words of the query: the two halves of binding a query to the image, each learnable by one attention
    lookup (the conjunction "is the target" is not)."""
    named = [-1 if k is None else k + 1 for k in query_words(scene)]
    return np.stack([colour == named[0], shape == named[1]], axis=1).astype(np.float32)


def encode_batch(processor, items: list[tuple[PolicyRequest, str]], family: ModelFamily = FAMILY):
    """Processor inputs for prompt + answer, with labels on the answer (and its end token) only."""
    tokenizer = processor.tokenizer
    prompts = [processor.apply_chat_template(messages(r, family), add_generation_prompt=True, tokenize=False)
               for r, _ in items]
    answers = [a + tokenizer.eos_token for _, a in items]
    tokenizer.padding_side = "right"
    try:
        inputs = processor(text=[p + a for p, a in zip(prompts, answers)], images=[r.image for r, _ in items],
                           return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "left"
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, answer in enumerate(answers):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        length = int(inputs["attention_mask"][row].sum())
        if inputs["input_ids"][row, length - len(ids):length].tolist() != ids:
            raise ValueError(f"answer tokens do not line up at the end of the prompt: {answer!r}")
        labels[row, length - len(ids):length] = inputs["input_ids"][row, length - len(ids):length]
    inputs["labels"] = labels
    return inputs


class ItemSource:
    """Training items in a fixed order by step: grounding, and refinement on the mini segmenter's masks."""

    def __init__(self, config: PolicyTrainConfig, segmenter=None) -> None:
        self.config = config
        self.segmenter = segmenter

    def scene(self, step: int, row: int) -> Scene:
        index = step * self.config.batch_size + row
        if step < self.config.curriculum_steps:
            return make_scene("train", index, kind="referring", shapes=(2, 2))
        return make_scene("train", index, kind=QUERY_KINDS[index % len(QUERY_KINDS)])

    def item(self, step: int, row: int, rng) -> tuple[PolicyRequest, str, Scene]:
        scene = self.scene(step, row)
        refine = self.segmenter is not None and step >= self.config.curriculum_steps and \
            rng.random() < self.config.refine_share
        if not refine:
            view = policy_view(scene.image, FAMILY.input_size)
            return PolicyRequest(view, FAMILY.grounding_prompt(scene.query)), \
                grounding_answer(scene, rng, self.config.box_noise), scene
        shown, gain = self.shown_mask(scene, rng)
        view = policy_view(scene.image, FAMILY.input_size, shown)
        return PolicyRequest(view, FAMILY.refine_prompt(scene.query)), \
            refinement_answer(scene, shown, click_gain=gain), scene

    def shown_mask(self, scene: Scene, rng):
        """A mask the agent may meet (the segmenter's from a noisy box of the target or, `WRONG_BOX_SHARE` of the
        time, of another shape, as a policy's wrong guess gives; after 0-2 simulated clicks), and the IoU a
        further click would add to it."""
        gt = scene.mask > 0
        others = [s.mask for s in scene.shapes if s.mask.any() and not np.array_equal(s.mask, gt)]
        boxed = others[int(rng.integers(len(others)))] if others and rng.random() < WRONG_BOX_SHARE else gt
        box = np.asarray(mask_box(boxed))
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        box = box + rng.normal(0, rng.choice([0.03, 0.1, 0.2]), 4) * side
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]) + 1, max(box[1], box[3]) + 1]
        embedding = self.segmenter.encode([scene.image])[0]
        result = self.segmenter.segment(embedding, box)
        points, labels = [], []
        for _ in range(int(rng.integers(0, 3))):
            click = next_click(result.mask, gt)
            if click is None:
                break
            points.append(click[0])
            labels.append(int(click[1]))
            result = self.segmenter.segment(embedding, box, points, labels, result.logits)
        before = mask_iou(result.mask, gt)

        def gain(click) -> float:
            after = self.segmenter.segment(embedding, box, [*points, click[0]], [*labels, int(click[1])],
                                           result.logits)
            return mask_iou(after.mask, gt) - before

        return result.mask, gain


def _box_probe_loss(probes: Probes, outputs, inputs, coordinate_loss: "CoordinateLoss", scenes) -> torch.Tensor:
    """Squared error of the target's box (in the view, over its size) read linearly from the last layer's input at
    the position that predicts the box's first coordinate: the box must be there before it can be written."""
    hidden = outputs.hidden_states[-2]
    coordinates = coordinate_loss.targets(inputs)
    losses = []
    for b, scene in enumerate(scenes):
        where = (coordinates[b] >= 0).nonzero()[:, 0]
        if scene is None or len(where) != 4:
            continue
        target = coordinates[b, where].float() / len(coordinate_loss.values)
        losses.append(((probes.box(hidden[b, where[0]]) - target) ** 2).mean())
    return torch.stack(losses).mean() * 10 if losses else torch.zeros(())


def _probe_losses(model, probes: Probes, outputs, inputs, scenes: list[Scene], grid: int) -> torch.Tensor:
    image_token = model.config.image_token_id
    hidden = outputs.hidden_states[PROBE_LAYER]
    vision = outputs.hidden_states[0]
    positions = torch.arange(grid * grid)
    rows, cols = positions // grid, positions % grid
    losses, binding, words = [], [], []
    for b, scene in enumerate(scenes):
        where = (inputs["input_ids"][b] == image_token).nonzero()[:, 0]
        if len(where) != grid * grid:
            continue
        colour, shape, target = token_labels(scene, FAMILY, grid)
        h, v = hidden[b, where], vision[b, where]
        losses += [F.cross_entropy(probes.row(h), rows), F.cross_entropy(probes.col(h), cols),
                   F.cross_entropy(probes.color(v), torch.from_numpy(colour)),
                   F.cross_entropy(probes.shape(v), torch.from_numpy(shape))]
        shown = torch.from_numpy(colour > 0)  # background tokens are told apart by the colour probe already
        if shown.any():
            mentioned = torch.from_numpy(mention_labels(scene, colour, shape))
            binding += [F.cross_entropy(probes.target(h[shown]), torch.from_numpy(target)[shown]),
                        F.binary_cross_entropy_with_logits(probes.mentioned(h[shown]), mentioned[shown])]
        for head, word in zip((probes.query_color, probes.query_shape), query_words(scene)):
            if word is not None:
                words.append(F.cross_entropy(head(h), torch.full((len(h),), word)))
    return _mean(losses), _mean(binding) + _mean(words)


def _mean(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(terms).mean() if terms else torch.zeros(())


class CoordinateLoss:
    """Soft-label cross-entropy and expected-value L1 on the answer's coordinate tokens (see the module doc)."""

    def __init__(self, tokenizer, sigma: float, family: ModelFamily = FAMILY) -> None:
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(coordinate_tokens(family)))
        self.ids = ids
        self.value_of = torch.full((len(tokenizer),), -1, dtype=torch.long)
        self.value_of[ids] = torch.arange(len(ids))
        self.values = torch.arange(len(ids), dtype=torch.float32)
        self.sigma = sigma
        # a coordinate follows "[" or a space; the 2 of "bbox_2d" follows "_"
        self.openers = torch.tensor(tokenizer.convert_tokens_to_ids(["Ġ[", "Ġ", "["]))

    def targets(self, inputs) -> torch.Tensor:
        """Per position t, the coordinate value token t + 1 holds (-1 where it holds none): what t predicts."""
        labels = inputs["labels"][:, 1:]
        values = self.value_of[labels.clamp(min=0)]
        opened = torch.isin(inputs["input_ids"][:, :-1], self.openers)
        return torch.where((labels >= 0) & opened, values, torch.full_like(values, -1))

    def __call__(self, logits: torch.Tensor, inputs) -> torch.Tensor:
        logits, targets = logits[:, :-1], self.targets(inputs)
        where = targets >= 0
        if not where.any():
            return torch.zeros(())
        scores = logits[where][:, self.ids].log_softmax(-1)
        target = targets[where].float()[:, None]
        soft = torch.softmax(-((self.values[None] - target) ** 2) / (2 * self.sigma ** 2), dim=-1)
        expected = (scores.exp() * self.values[None]).sum(-1)
        return -(soft * scores).sum(-1).mean() + (expected - target[:, 0]).abs().mean() / len(self.values) * 10


def _pointer_loss(outputs, inputs, scenes: list[Scene], grid: int, coordinate_loss: CoordinateLoss,
                  image_token: int) -> torch.Tensor:
    """-log of the attention mass that head 0 of `POINTER_LAYER` puts on the target's image tokens, at every
    position that predicts a box coordinate (grounding items)."""
    attention = outputs.attentions[POINTER_LAYER][:, 0]
    coordinates = coordinate_loss.targets(inputs)
    losses = []
    for b, scene in enumerate(scenes):
        if scene is None:
            continue
        where = (inputs["input_ids"][b] == image_token).nonzero()[:, 0]
        predicts = coordinates[b] >= 0
        if len(where) != grid * grid or not predicts.any():
            continue
        target = torch.from_numpy(token_labels(scene, FAMILY, grid)[2]).bool()
        mass = attention[b][predicts.nonzero()[:, 0]][:, where[target]].sum(-1)
        losses.append(-(mass + 1e-6).log().mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


@torch.no_grad()
def evaluate_boxes(model, processor, count: int, split: str = "val") -> dict[str, float]:
    """Greedy grounding on `count` scenes of `split`: parse rate and mean box IoU with the target's box."""
    from ...plugin.agent.parsing import AnswerError, parse_grounding
    from ...plugin.agent.policy import TransformersPolicy

    policy = TransformersPolicy(model, processor, family=FAMILY, max_new_tokens=40, batch_size=16)
    scenes = [make_scene(split, i) for i in range(count)]
    texts = policy.generate([PolicyRequest(policy_view(s.image, FAMILY.input_size), FAMILY.grounding_prompt(s.query))
                             for s in scenes])
    model.train()
    ious, parsed, by_kind = [], 0, {k: [] for k in QUERY_KINDS}
    for scene, text in zip(scenes, texts):
        try:
            box = FAMILY.box_to_image(parse_grounding(text).box, (scene.image.shape[1], scene.image.shape[0]))
            parsed += 1
            iou = box_iou(box, mask_box(scene.mask > 0))
        except AnswerError:
            iou = 0.0
        ious.append(iou)
        by_kind[scene.kind].append(iou)
    return {"parse_rate": parsed / count, "box_iou": float(np.mean(ious)),
            **{f"box_iou_{k}": float(np.mean(v)) for k, v in by_kind.items() if v}}


def compact_checkpoint(state_path: Path, target: Path) -> None:
    """A resumable checkpoint small enough for the repository: model and probes in bfloat16, step and time, no
    optimiser (a resume from it starts a fresh optimiser on the same weights)."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    half = {key: {k: v.to(torch.bfloat16) for k, v in state[key].items()} for key in ("model", "probes")}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**half, "step": state["step"], "elapsed": state["elapsed"]}, target)


def train_policy(config: PolicyTrainConfig) -> dict[str, float]:
    """Warm up (or resume) the mini policy; returns the last evaluation. Progress goes to metrics.jsonl."""
    torch.set_num_threads(config.threads)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model, processor = build_policy(config.seed, **config.model)
    model.config.text_config._attn_implementation = "eager"  # the pointer loss reads attention weights
    model.train()
    grid = FAMILY.input_size[0] // 28
    probes = Probes(model.config.text_config.hidden_size, grid)
    parameters = list(model.parameters()) + list(probes.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    step, elapsed = 0, 0.0
    state_path = output / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        missing = probes.load_state_dict(state["probes"], strict=False).missing_keys
        if not missing and "optimizer" in state:  # an earlier recipe's or a compact checkpoint keeps its weights only
            optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    (output / "config.json").write_text(json.dumps(asdict(config), indent=1))
    segmenter = None
    if config.segmenter and config.refine_share > 0:
        from ...plugin.agent.segmenters import load_segmenter

        segmenter = load_segmenter(config.segmenter, device="cpu")
    source = ItemSource(config, segmenter)
    coordinate_loss = CoordinateLoss(processor.tokenizer, config.coordinate_sigma)

    def schedule(s: int) -> float:
        if s < config.warmup_steps:
            return (s + 1) / config.warmup_steps
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - config.warmup_steps) /
                                               max(1, config.steps - config.warmup_steps)))

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "probes": probes.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "elapsed": elapsed + time.time() - started}, tmp)
        os.replace(tmp, state_path)
        save_policy(model, processor, output / "policy")

    log = (output / "metrics.jsonl").open("a")
    metrics: dict[str, float] = {}
    while step < config.steps:
        rng = np.random.default_rng([config.seed, step])
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * schedule(step)
        tick = time.time()
        items = [source.item(step, row, rng) for row in range(config.batch_size)]
        inputs = encode_batch(processor, [(r, a) for r, a, _ in items])
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        scenes = [s for _, _, s in items]
        probe, binding = _probe_losses(model, probes, outputs, inputs, scenes, grid)
        coordinates = coordinate_loss(outputs.logits, inputs)
        grounding = [s if "bbox_2d" in a else None for _, a, s in items]
        pointer = _pointer_loss(outputs, inputs, grounding, grid, coordinate_loss, model.config.image_token_id)
        probe = probe + _box_probe_loss(probes, outputs, inputs, coordinate_loss, grounding)
        loss = (outputs.loss + config.probe_weight * probe + config.binding_weight * binding
                + config.coordinate_weight * coordinates + config.pointer_weight * pointer)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        step += 1
        record = {"step": step, "loss": round(float(outputs.loss.detach()), 4),
                  "probe": round(float(probe.detach()), 4), "binding": round(float(binding.detach()), 4),
                  "coordinates": round(float(coordinates.detach()), 4), "pointer": round(float(pointer.detach()), 4),
                  "seconds": round(time.time() - tick, 3)}
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            metrics = evaluate_boxes(model, processor, config.eval_scenes)
            record["eval"] = metrics
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % config.save_every == 0 or step == config.steps:
            save()
    log.close()
    metrics["train_seconds"] = round(elapsed + time.time() - started, 1)
    return metrics
