"""One real GRPO training step of a full-size Qwen2.5-VL-7B architecture: memory and time, LoRA and full.

Random weights, bf16, no download: the architecture comes from the config written below (Qwen2.5-VL-7B-Instruct's
published numbers) and the tokenizer is a byte-level BPE trained here carrying Qwen's special tokens, as
`sam_veteran.plugin.agent.tiny` builds its own. The script needs only torch, transformers, tokenizers and peft
(what the GPU machine has), not this package, TRL or segment-anything.

One step is what one group of the trainer costs on one GPU: the grounding prompt with an 840x840 image (900 image
tokens), `--rollouts` completions sampled with `generate` (forced to `--completion-tokens` tokens, as random
weights never stop), the reference model's log-probs (LoRA: the adapter switched off; full: a second bf16 copy),
then the GRPO loss (TRL's ``loss_type="grpo"``: clipped ratio, KL k3 with beta 0.005) on the whole group as one
micro-batch with gradient checkpointing, backward and one AdamW step (lr 1e-6, weight decay 0.01; full
fine-tuning keeps AdamW's moments in bf16 on this one GPU, where the 8-GPU run shards fp32 ones with ZeRO-3).

    python bench/gpu/train_step.py --mode both --out bench/results/train_step_h200.json   # H200: ~3-4 minutes
    python bench/gpu/train_step.py --dry-run                                              # CPU, tiny, seconds

`--trainer` runs the project's own `sam_veteran.trainer.train()` instead (not this hand-written step) for
`--steps` GRPO steps: the same random 7B policy written to disk with its processor (a generation config that
suppresses the ids outside the tokenizer and the vision placeholders, as the tiny models do), a random SAM vit_h
checkpoint and generated scenes in a FiftyOne dataset; real rewards, dynamic sampling, the loss and AdamW, as
`trainer/configs/one_gpu_lora.yaml` (`--mode lora`) or full fine-tuning without DeepSpeed (`--mode full`). It
reports TRL's step time and the trainer's `timing/generation_s` and `timing/rewards_s` per step (the rest is
log-probs, loss, backward and the optimiser step) and peak GPU memory. It needs this package's dependencies (TRL,
FiftyOne with its database, segment-anything, pycocotools): on the GPU machine, carried wheels. Run one mode per
process for a clean peak-memory figure:

    python bench/gpu/train_step.py --trainer --mode lora --steps 3 --out bench/results/train_run_lora.json
    python bench/gpu/train_step.py --trainer --mode full --steps 2 --out bench/results/train_run_full.json
    python bench/gpu/train_step.py --trainer --dry-run --mode lora --steps 1                # CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = ('Find the object described by the query: "the mug nearest the laptop".\nThink about which object in the '
          "image the query refers to, then give one bounding box around it.\nCoordinates: absolute pixels of this "
          "840x840 image, (0, 0) top left.\nOutput the reasoning inside <think> </think> and then the answer inside "
          '<answer> </answer> as JSON, e.g.\n<think>...</think><answer>{"bbox_2d": [168, 252, 504, 672]}</answer>')

# Qwen2.5-VL-7B-Instruct's config.json numbers (8.3B parameters).
FULL_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24]))
FULL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31])
TINY_TEXT = dict(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=4096,
                 rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                   window_size=56, fullatt_block_indexes=[1])
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def build_processor(image_side: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([PROMPT, "0123456789 ,.[]{}:"], trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")
    pixels = image_side * image_side
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=pixels, max_pixels=pixels)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=fast,
                               video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
                               chat_template=CHAT_TEMPLATE)


def build_config(processor, tiny: bool):
    from transformers import Qwen2_5_VLConfig

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TINY_TEXT if tiny else FULL_TEXT, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=TINY_VISION if tiny else FULL_VISION,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_model(config, device, dtype):
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model


def per_token_logps(model, inputs, sequences, completion_length):
    """Log-probs of the completion tokens (logits computed for those positions only)."""
    extra = {}
    if "mm_token_type_ids" in inputs:  # transformers >= 5.x processors return it; extend it over the completion
        types = inputs["mm_token_type_ids"]
        extra["mm_token_type_ids"] = torch.cat([types, types.new_zeros(sequences.shape[0], completion_length)], 1)
    out = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"], logits_to_keep=completion_length + 1, **extra)
    logits = out.logits[:, :-1].float()
    targets = sequences[:, -completion_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_mode(mode: str, args, device, dtype) -> dict:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    processor = build_processor(args.image_side)
    config = build_config(processor, args.dry_run)
    model = build_model(config, device, dtype)
    ref = None
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules=LORA_TARGETS))
    elif args.beta:
        ref = build_model(config, device, dtype).eval().requires_grad_(False)
        ref.load_state_dict(model.state_dict())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.01)
    sync(device)
    built = time.perf_counter()

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.image_side, args.image_side, 3),
                                                              dtype=np.uint8))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text] * args.rollouts, images=[image] * args.rollouts, return_tensors="pt").to(device)
    prompt_length = inputs["input_ids"].shape[1]
    vocab_text = len(processor.tokenizer)

    # 1. rollouts
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        bad = [[config.image_token_id], [config.video_token_id]]
        sequences = model.generate(**inputs, do_sample=True, max_new_tokens=args.completion_tokens,
                                   min_new_tokens=args.completion_tokens, bad_words_ids=bad, use_cache=True,
                                   pad_token_id=processor.tokenizer.pad_token_id)
    sync(device)
    t1 = time.perf_counter()
    sequences = sequences[:, : prompt_length + args.completion_tokens]
    # Keep completions inside the tokenizer's vocabulary and off the vision placeholders: a random model's
    # samples can be any of the 152k ids, and an image token in a completion breaks the image/feature count.
    vision = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    allowed = torch.tensor([i for i in range(vocab_text) if i not in vision], device=sequences.device)
    sequences[:, prompt_length:] = allowed[sequences[:, prompt_length:] % len(allowed)]

    # 2. old and reference log-probs
    with torch.no_grad():
        old = per_token_logps(model, inputs, sequences, args.completion_tokens)
        if mode == "lora" and args.beta:
            with model.disable_adapter():
                reference = per_token_logps(model, inputs, sequences, args.completion_tokens)
        elif ref is not None:
            reference = per_token_logps(ref, inputs, sequences, args.completion_tokens)
        else:
            reference = None
    sync(device)
    t2 = time.perf_counter()

    # 3. GRPO loss, backward, optimiser step (checkpointing only now: generation needs its KV cache)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    rewards = torch.rand(args.rollouts, device=device)
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    logps = per_token_logps(model, inputs, sequences, args.completion_tokens)
    ratio = torch.exp(logps - old)
    loss_tokens = -torch.min(ratio * advantages[:, None], torch.clamp(ratio, 0.8, 1.2) * advantages[:, None])
    if reference is not None:
        loss_tokens = loss_tokens + args.beta * (torch.exp(reference - logps) - (reference - logps) - 1)
    loss = loss_tokens.mean(dim=1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    t3 = time.perf_counter()
    result = {
        "mode": mode, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "tiny": args.dry_run,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "rollouts": args.rollouts, "prompt_tokens": prompt_length, "completion_tokens": args.completion_tokens,
        "seconds": {"build": round(built - started, 2), "generate": round(t1 - t0, 2),
                    "old_and_ref_logps": round(t2 - t1, 2), "train_step": round(t3 - t2, 2),
                    "step_total": round(t3 - t0, 2)},
        "loss": float(loss.detach()),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, ref, optimizer
    return result


REPO = Path(__file__).resolve().parents[2]


def import_package() -> None:
    """`sam_veteran` from this checkout (its root is the package) when it is not installed."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("sam_veteran") is None:
        link = Path(tempfile.mkdtemp()) / "sam_veteran"
        link.symlink_to(REPO)
        sys.path.insert(0, str(link.parent))


def write_policy(directory: Path, args, device, dtype) -> str:
    """The random Qwen2.5-VL policy (7B, or tiny with --dry-run) and its processor, as a folder `train()` loads."""
    processor = build_processor(args.image_side)
    config = build_config(processor, args.dry_run)
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    keep = set(range(len(processor.tokenizer))) - {config.image_token_id, config.video_token_id,
                                                   config.vision_start_token_id, config.vision_end_token_id}
    model.generation_config.suppress_tokens = [i for i in range(config.text_config.vocab_size) if i not in keep]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    del model
    return str(directory)


def write_segmenter(path: Path, kind: str) -> str:
    """A randomly initialised segment-anything checkpoint (`vit_h` on the GPU)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    torch.save(sam_model_registry[kind]().state_dict(), path)
    return str(path)


def run_trainer(mode: str, args, device, dtype) -> dict:
    import uuid

    import_package()
    from sam_veteran.plugin.demo import build_demo_dataset
    from sam_veteran.trainer.config import config_from_dict
    from sam_veteran.trainer.train import train

    work = args.work_dir / mode
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    policy = write_policy(work / "policy", args, device, dtype)
    if args.dry_run:  # the project's tiny SAM: a random vit_b encodes a 1024-pixel image slowly on a CPU
        from sam_veteran.plugin.agent.tiny import tiny_model_paths

        segmenter = tiny_model_paths()[1]
    else:
        segmenter = write_segmenter(work / "sam.pth", "vit_h")
    dataset = build_demo_dataset(work / "scenes", num_samples=8, name=f"train-step-{mode}-{uuid.uuid4().hex[:8]}")
    built = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = config_from_dict({
        "policy": policy, "segmenter": segmenter, "output_dir": str(work / "run"), "overwrite_output_dir": True,
        "num_generations": args.rollouts, "per_device_train_batch_size": args.rollouts,
        "gradient_accumulation_steps": 2, "max_completion_length": args.completion_tokens, "max_steps": args.steps,
        "save_steps": 10**6, "report_to": [], "use_cpu": args.dry_run, "bf16": not args.dry_run,
        "input_size": [args.image_side, args.image_side], "lora": {"enabled": mode == "lora"},
        "tasks": {"policy_refresh_steps": 0}, "torch_threads": 1 if args.dry_run else None,
    })
    result = train(config, view=dataset)
    trained = time.perf_counter()
    steps = [json.loads(line) for line in result.metrics_log.read_text().splitlines()]
    steps = [s for s in steps if "step_time" in s]
    dataset.delete()
    out = {
        "mode": mode, "runner": "sam_veteran.trainer.train", "tiny": args.dry_run,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "prompts_per_step": 2, "rollouts": args.rollouts, "completion_tokens": args.completion_tokens,
        "seconds": {"build": round(built - started, 2), "train_and_save": round(trained - built, 2)},
        "steps": [{"step": s["step"], "step_time": round(s["step_time"], 2),
                   "generation": round(s.get("timing/generation_s", 0.0), 2),
                   "rewards": round(s.get("timing/rewards_s", 0.0), 2),
                   "logps_loss_backward_optimiser": round(s["step_time"] - s.get("timing/generation_s", 0.0)
                                                          - s.get("timing/rewards_s", 0.0), 2)} for s in steps],
        "global_step": result.global_step,
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["lora", "full", "both"], default="both")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--image-side", type=int, default=840)
    parser.add_argument("--beta", type=float, default=0.005)
    parser.add_argument("--dry-run", action="store_true", help="tiny architecture on the CPU: checks the code path")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--trainer", action="store_true", help="run sam_veteran.trainer.train() for --steps steps")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sam-veteran-train-step"))
    args = parser.parse_args(argv)
    if args.dry_run:
        torch.set_num_threads(1)
        device, dtype = torch.device("cpu"), torch.float32
        args.rollouts, args.completion_tokens, args.image_side = min(args.rollouts, 2), min(args.completion_tokens, 8), 56
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        raise SystemExit("no GPU: run with --dry-run to check the code path on the CPU")
    results = []
    threads = torch.get_num_threads()
    try:
        for mode in (["lora", "full"] if args.mode == "both" else [args.mode]):
            results.append((run_trainer if args.trainer else run_mode)(mode, args, device, dtype))
            print(json.dumps(results[-1]), flush=True)
    finally:
        torch.set_num_threads(threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
