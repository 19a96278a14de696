"""Does a mini policy read the query in the light of the image? Three measurements on val scenes:

- swap: on two-shape referring scenes, the policy is asked for each shape by name. A policy that binds boxes the
  named shape (pick rate near 1) and so a different shape for each query; one that ignores the query boxes the
  same shape for both (pick rate 0.5, the chance level);
- what the hidden states hold: linear probes (fitted on 200 scenes, scored on 100 others) for each image token's
  own colour and for the query's colour word, per layer, and for the query's colour at the position that writes
  the box's first coordinate. Binding needs the two brought together somewhere;
- attention from each image token to the query's colour and shape words, per layer and head, split by whether the
  token's own colour (shape) is the queried one: a head that binds attends to the word more from the tokens it
  names; equal attention means the word is read by position only. The mini family puts the query before the image
  (`ModelFamily.query_first`), so image tokens can see the words.

    python bench/mini_binding.py                       # the shipped mini policy
    python bench/mini_binding.py --policy runs/mini/policy/policy --scenes 80

Prints its lines and writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sam_veteran.plugin.agent.overlay import policy_view
from sam_veteran.plugin.agent.parsing import AnswerError, parse_grounding
from sam_veteran.plugin.agent.policy import PolicyRequest, TransformersPolicy, messages
from sam_veteran.plugin.agent.shipped import SHIPPED
from sam_veteran.plugin.scenes import COLORS, SHAPES, make_scene
from sam_veteran.trainer.mini.policy import FAMILY, expert_text, mention_labels, query_words, token_labels
from sam_veteran.trainer.rewards import box_iou, mask_box

PROBE_FIT, PROBE_SCORED = 200, 100  # scenes


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
        colour_index, shape_index = query_words(scene)
        colour_word, shape_word = list(COLORS)[colour_index], SHAPES[shape_index]
        view = policy_view(scene.image, FAMILY.input_size)
        request = PolicyRequest(view, FAMILY.grounding_prompt(scene.query))
        text = processor.apply_chat_template(messages(request, FAMILY), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[view], return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        image = [k for k, t in enumerate(ids) if t == image_token]
        colour, shape, _ = token_labels(scene, FAMILY, int(round(len(image) ** 0.5)))
        on_shape = colour > 0
        queried_colour, queried_shape = mention_labels(scene, colour, shape).T.astype(bool)
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


def query_swap(policy: str, scenes: int) -> dict[str, float]:
    """Two-shape referring scenes, each shape asked for by name: the share of answers whose box fits the named
    shape better than the other one, and the share of scenes where both queries got a box on the same shape."""
    agent_policy = TransformersPolicy.from_pretrained(policy, device="cpu", batch_size=16, max_new_tokens=40)
    requests, asked = [], []
    for index in range(scenes):
        scene = make_scene("val", index, kind="referring", shapes=(2, 2))
        view = policy_view(scene.image, FAMILY.input_size)
        for k, shape in enumerate(scene.shapes):
            requests.append(PolicyRequest(view, FAMILY.grounding_prompt(f"the {shape.name}")))
            asked.append((scene, k))
    chosen = []
    for (scene, k), text in zip(asked, agent_policy.generate(requests)):
        size = (scene.image.shape[1], scene.image.shape[0])
        try:
            box = FAMILY.box_to_image(parse_grounding(text).box, size)
        except AnswerError:
            chosen.append(-1)
            continue
        chosen.append(int(np.argmax([box_iou(box, mask_box(shape.mask)) for shape in scene.shapes])))
    picks = [c == k for c, (_, k) in zip(chosen, asked)]
    same = [a == b >= 0 for a, b in zip(chosen[::2], chosen[1::2])]
    return {"pick_rate": float(np.mean(picks)), "same_shape_for_both": float(np.mean(same))}


def _probe_accuracy(features: np.ndarray, labels: np.ndarray, fitted: np.ndarray) -> float:
    """A linear softmax probe fitted on the `fitted` rows, scored on the others (features standardised)."""
    x = torch.from_numpy((features - features[fitted].mean(0)) / (features[fitted].std(0) + 1e-6)).float()
    y = torch.from_numpy(labels).long()
    probe = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimiser = torch.optim.LBFGS(probe.parameters(), max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x[fitted]), y[fitted]) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float((probe(x[~fitted]).argmax(1) == y[~fitted]).float().mean())


def hidden_state_probes(policy: str) -> dict[str, list[float]]:
    """Per layer (0 = the input embeddings): probe accuracy for an image token's own colour and for the query's
    colour word read from image tokens (tokens on a shape only), and for the query's colour read at the position
    that writes the box's first coordinate (teacher-forced up to it)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(policy, dtype=torch.float32)
    model.eval()
    processor = AutoProcessor.from_pretrained(policy)
    answer_start = expert_text("grounding", "", (0, 0, 0, 0)).split("[")[0] + "["
    image_rows, answer_rows, own, queried, scene_of, answer_queried = [], [], [], [], [], []
    for index in range(PROBE_FIT + PROBE_SCORED):
        scene = make_scene("val", 1000 + index, kind="referring")
        colour_word = query_words(scene)[0]
        view = policy_view(scene.image, FAMILY.input_size)
        request = PolicyRequest(view, FAMILY.grounding_prompt(scene.query))
        text = processor.apply_chat_template(messages(request, FAMILY), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text + answer_start], images=[view], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
        colour = token_labels(scene, FAMILY, int(round(len(image) ** 0.5)))[0]
        on_shape = torch.from_numpy(colour > 0)
        image_rows.append(np.stack([h[0, image][on_shape].numpy() for h in hidden]))
        answer_rows.append(np.stack([h[0, -1].numpy() for h in hidden]))
        own.append(colour[colour > 0] - 1)
        queried.append(np.full(int(on_shape.sum()), colour_word))
        scene_of.append(np.full(int(on_shape.sum()), index))
        answer_queried.append(colour_word)
    tokens, answers = np.concatenate(image_rows, axis=1), np.stack(answer_rows, axis=1)
    fitted, answer_fitted = np.concatenate(scene_of) < PROBE_FIT, np.arange(len(answer_queried)) < PROBE_FIT
    own_labels, queried_labels = np.concatenate(own), np.concatenate(queried)
    return {"own colour at image tokens": [_probe_accuracy(t, own_labels, fitted) for t in tokens],
            "query colour at image tokens": [_probe_accuracy(t, queried_labels, fitted) for t in tokens],
            "query colour at the first coordinate": [_probe_accuracy(a, np.array(answer_queried), answer_fitted)
                                                     for a in answers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(SHIPPED["mini"]["policy"]))
    parser.add_argument("--scenes", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    swap = query_swap(args.policy, args.scenes)
    print(f"swap ({args.scenes} two-shape scenes, each shape asked for): box on the named shape "
          f"{swap['pick_rate']:.2f} (chance 0.50), the same shape for both queries {swap['same_shape_for_both']:.2f}")
    for name, accuracy in hidden_state_probes(args.policy).items():
        print(f"probe, {name} (chance {1 / len(COLORS):.2f}), by layer: " + " ".join(f"{a:.2f}" for a in accuracy))
    for layer, table in measure(args.policy, args.scenes).items():
        heads = "  ".join(f"h{h} colour {c1:.3f}/{c0:.3f} shape {s1:.3f}/{s0:.3f}"
                          for h, (c1, c0, s1, s0) in enumerate(table))
        print(f"layer {layer} (queried/other): {heads}")


if __name__ == "__main__":
    main()
