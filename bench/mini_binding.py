"""Does a mini policy read the query in the light of the image? Attention from each image token to the query's
colour and shape words, per layer and head, split by whether the token's own colour (shape) is the queried one.

    python bench/mini_binding.py                       # the shipped mini policy, 40 val referring scenes
    python bench/mini_binding.py --policy runs/mini/policy/policy --scenes 80

A head that binds the query to the image attends to the word more from the tokens it names than from the others;
equal attention means the word is read by position only. The mini family puts the query before the image
(`ModelFamily.query_first`), so image tokens can see the words. Prints one line per layer and writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sam_veteran.plugin.agent.overlay import policy_view
from sam_veteran.plugin.agent.policy import PolicyRequest, messages
from sam_veteran.plugin.agent.shipped import SHIPPED
from sam_veteran.plugin.scenes import COLORS, SHAPES, make_scene
from sam_veteran.trainer.mini.policy import FAMILY, token_labels


def word_positions(tokenizer, ids: list[int], word: str) -> list[int]:
    return [k for k, t in enumerate(ids) if tokenizer.decode([t]).strip() == word]


def measure(policy: str, scenes: int) -> dict[int, np.ndarray]:
    """Per layer: (heads, 4) mean attention to the colour word from tokens of the queried / another colour, and
    to the shape word from tokens of the queried / another shape."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(policy, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    processor = AutoProcessor.from_pretrained(policy)
    tokenizer, image_token = processor.tokenizer, model.config.image_token_id
    rows: dict[int, list[list[np.ndarray]]] = {}
    for index in range(scenes):
        scene = make_scene("val", index, kind="referring")
        words = scene.query.split()
        colour_word = next(c for c in COLORS if c in words)
        shape_word = next(s for s in SHAPES if s in words)
        view = policy_view(scene.image, FAMILY.input_size)
        request = PolicyRequest(view, FAMILY.grounding_prompt(scene.query))
        text = processor.apply_chat_template(messages(request, FAMILY), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[view], return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        image = [k for k, t in enumerate(ids) if t == image_token]
        colour, shape, _ = token_labels(scene, FAMILY, int(round(len(image) ** 0.5)))
        on_shape = colour > 0
        queried_colour = on_shape & (colour == list(COLORS).index(colour_word) + 1)
        queried_shape = on_shape & (shape == SHAPES.index(shape_word) + 1)
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        for layer, attention in enumerate(attentions):
            from_image = attention[0][:, image]  # (heads, image tokens, keys)
            to_colour = from_image[:, :, word_positions(tokenizer, ids, colour_word)].sum(-1).numpy()
            to_shape = from_image[:, :, word_positions(tokenizer, ids, shape_word)].sum(-1).numpy()
            rows.setdefault(layer, []).append([to_colour[:, queried_colour], to_colour[:, on_shape & ~queried_colour],
                                               to_shape[:, queried_shape], to_shape[:, on_shape & ~queried_shape]])
    return {layer: np.stack([np.concatenate([r[k] for r in per_scene], axis=1).mean(1) for k in range(4)], axis=1)
            for layer, per_scene in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(SHIPPED["mini"]["policy"]))
    parser.add_argument("--scenes", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for layer, table in measure(args.policy, args.scenes).items():
        heads = "  ".join(f"h{h} colour {c1:.3f}/{c0:.3f} shape {s1:.3f}/{s0:.3f}"
                          for h, (c1, c0, s1, s0) in enumerate(table))
        print(f"layer {layer} (queried/other): {heads}")


if __name__ == "__main__":
    main()
