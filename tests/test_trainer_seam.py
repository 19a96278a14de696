"""The TRL seam: the overrides run, a second-round candidate chosen by dynamic sampling is the one whose log-probs
reach the loss, oversampling is one generation call, and a changed TRL fails loudly."""

import logging
import uuid

import pytest
import torch
from trl import GRPOTrainer

from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.trainer.train import build_trainer
from sam_veteran.trainer.trl_seam import TRLIncompatible, candidate_rows, check_trl, repeat_multimodal
from tests.scripted import click_answer
from tests.test_trainer_grpo import tiny_config

SIZE = 4  # num_generations


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("scenes"), num_samples=4, name=f"seam-{uuid.uuid4().hex}",
                              seed=0)


def test_the_installed_trl_has_the_overridden_signatures():
    check_trl()


def test_a_changed_trl_signature_fails_loudly():
    class OldTRL(GRPOTrainer):  # TRL 1.0-1.9 had a three-argument _generate_single_turn
        def _generate_single_turn(self, prompts, images, num_generations):
            raise AssertionError

    with pytest.raises(TRLIncompatible, match=r"_generate_single_turn.*changed"):
        check_trl(OldTRL)

    class NoLongerCalled(GRPOTrainer):
        def _generate(self, prompts):
            return self._generate_batched(prompts)

    with pytest.raises(TRLIncompatible, match="no longer calls _generate_single_turn"):
        check_trl(NoLongerCalled)


def test_candidate_rows_repeat_each_group_by_its_factor():
    assert candidate_rows([2, 1], 2) == [0, 1, 0, 1, 2, 3]


def test_repeated_multimodal_fields_match_the_processor_on_repeated_prompts(tiny_models):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["policy-qwen2_5_vl"])
    images = [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (84, 56), "blue")]  # different patch counts
    chats = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "q"}]}]
             for image in images]

    def tokenize(conversations):
        out = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
        return {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}

    rows = [1, 0, 1]
    repeated = repeat_multimodal(tokenize(chats), rows, [[image] for image in images])
    expected = tokenize([chats[r] for r in rows])
    assert repeated.keys() == expected.keys() and "pixel_values" in repeated
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(repeated[key], value), key
        else:  # per-token fields, one list per prompt
            assert [list(x) for x in repeated[key]] == [list(x) for x in value], key


class ScriptedEngine:
    """TRL's `VLLMGeneration` interface (colocate mode: one completion per prompt row), answering from a script:
    candidate c of each group (its position among the group's repeated rows) answers `script[c]` with log-prob
    `logprobs[c]` per token."""

    def __init__(self, tokenizer, script: list[str], logprobs: list[float]) -> None:
        self.tokenizer, self.script, self.logprobs = tokenizer, script, logprobs
        self.calls: list[int] = []
        self.synced = 0

    def sync_weights(self) -> None:
        self.synced += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append(len(prompts))
        per_group = len(self.script)
        ids = [self.tokenizer.encode(self.script[i % per_group]) + [self.tokenizer.eos_token_id]
               for i in range(len(prompts))]
        logprobs = [[[self.logprobs[i % per_group]] for _ in seq] for i, seq in enumerate(ids)]
        return prompts, ids, logprobs, None


# Round one: four stops. Round two: the other action types, then a stop. The 1:2:2:1 mix of a group of 4 is one
# of each type, so dynamic sampling keeps candidate 0 (a stop) and candidates 4, 5, 6 of the second round.
SCRIPT = [click_answer()] * SIZE + [click_answer([5, 5]), click_answer(None, [30, 30]),
                                    click_answer([5, 5], [30, 30]), click_answer()]
CHOSEN = [0, 4, 5, 6]


def mask_trainer(tmp_path, tiny_models, scenes, **overrides):
    config = tiny_config(tmp_path, tiny_models, num_generations=SIZE, per_device_train_batch_size=SIZE,
                         gradient_accumulation_steps=2, tasks__ratios={"mask": 1.0}, tasks__policy_refresh_steps=0,
                         report_to=[], **overrides)
    trainer, _ = build_trainer(config, view=scenes)
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(2)]
    return trainer, [row for row in rows for _ in range(SIZE)]


def test_a_second_round_candidate_chosen_by_dynamic_sampling_is_the_one_whose_logprobs_reach_the_loss(
        tmp_path, tiny_models, scenes):
    trainer, inputs = mask_trainer(tmp_path, tiny_models, scenes, trl={
        "vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": 1e6})
    tokenizer = trainer.processing_class.tokenizer
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which this test skips
    base = [-7.0 - 0.01 * c for c in range(len(SCRIPT))]

    def run(logprobs):
        engine = ScriptedEngine(tokenizer, SCRIPT, logprobs)
        trainer.attach_generation_engine(engine)
        output = trainer._generate_and_score_completions(inputs)
        return engine, output, trainer.compute_loss(trainer.model, output).item()

    engine, output, loss = run(base)
    assert engine.calls == [2 * SIZE * 2] and engine.synced == 1  # every candidate of the batch in one call
    completions = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                   for ids, mask in zip(output["completion_ids"], output["completion_mask"])]
    assert completions == [SCRIPT[c] for c in CHOSEN] * 2
    sampled = output["sampling_per_token_logps"]
    for row, c in enumerate(CHOSEN * 2):
        assert torch.allclose(sampled[row][output["completion_mask"][row].bool()], torch.tensor(base[c]))

    changed_chosen = list(base)
    changed_chosen[5] -= 0.5  # a second-round candidate that dynamic sampling keeps
    _, output_chosen, loss_chosen = run(changed_chosen)
    changed_unchosen = list(base)
    changed_unchosen[7] -= 0.5  # a second-round candidate it drops
    _, output_unchosen, loss_unchosen = run(changed_unchosen)
    rows = [i for i, c in enumerate(CHOSEN * 2) if c == 5]
    ratio = output["importance_sampling_ratio"]
    assert not torch.allclose(output_chosen["importance_sampling_ratio"][rows], ratio[rows])
    assert loss_chosen != loss
    assert torch.equal(output_unchosen["importance_sampling_ratio"], ratio) and loss_unchosen == loss


def test_oversampling_per_task_is_one_transformers_generate_call(tmp_path, tiny_models, scenes):
    trainer, inputs = mask_trainer(tmp_path, tiny_models, scenes, sampling__oversample={"mask": 3})
    model = trainer.model
    calls = []
    generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.generate = counting_generate
    output = trainer._generate_and_score_completions(inputs)
    assert calls == [2 * SIZE * 3]  # two groups, three candidates per kept completion, one call
    assert output["completion_ids"].shape[0] == 2 * SIZE


def test_a_batch_that_should_be_oversampled_but_is_not_fails_loudly(tmp_path, tiny_models, scenes):
    trainer, inputs = mask_trainer(tmp_path, tiny_models, scenes)
    trainer._generate_single_turn = lambda *args, **kwargs: GRPOTrainer._generate_single_turn(trainer, *args,
                                                                                              **kwargs)
    with pytest.raises(TRLIncompatible, match="should have been oversampled"):
        trainer._generate_and_score_completions(inputs)



def test_stop_rates_are_logged_per_case_and_a_low_kept_share_warns(tmp_path, tiny_models, scenes, caplog):
    trainer, inputs = mask_trainer(tmp_path, tiny_models, scenes, sampling__warn_window=1)
    tokenizer = trainer.processing_class.tokenizer
    trainer.attach_generation_engine(ScriptedEngine(tokenizer, SCRIPT, [-7.0] * len(SCRIPT)))
    trainer._generate_and_score_completions(inputs)
    metrics = trainer._metrics["train"]
    cases = {x["record"].case for x in inputs} & {"good", "refine"}
    assert cases
    for case in cases:  # each group keeps one stop among its four completions
        assert metrics[f"stopping/{case}/stop_rate"] == [0.25] == metrics[f"tasks/mask/stop_rate_{case}"]
    assert metrics["dynamic_sampling/mask/kept_group_share"] == [1.0]

    trainer.attach_generation_engine(ScriptedEngine(tokenizer, [click_answer()] * len(SCRIPT), [-7.0] * len(SCRIPT)))
    with caplog.at_level(logging.WARNING, logger="sam_veteran.trainer.grpo"):
        trainer._generate_and_score_completions(inputs)  # only stops: the 1:2:2:1 mix cannot be met
    assert metrics["dynamic_sampling/mask/kept_group_share"][-1] == 0.0
    assert "raise sampling.oversample for mask (now 2)" in caplog.text
