import numpy as np
import pytest
from PIL import Image

from sam_veteran.plugin.agent import Agent, AgentConfig, AgentInput, PolicyRequest, TransformersPolicy
from sam_veteran.plugin.agent.prompts import FAMILIES


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen2_vl"])
def test_tiny_policies_load_and_generate_in_batches(tiny_models, family):
    policy = TransformersPolicy.from_pretrained(tiny_models[f"policy-{family}"], device="cpu", max_new_tokens=8,
                                                batch_size=2)
    assert policy.family is FAMILIES[family]
    rng = np.random.default_rng(0)
    requests = [PolicyRequest(Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)),
                              policy.family.grounding_prompt(q)) for q in ["cat", "the dog on the left", "x"]]
    answers = policy.generate(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert "<|image_pad|>" not in "".join(answers)


def test_trust_remote_code_is_off_by_default(tiny_models, monkeypatch):
    import transformers

    seen = {}
    original = transformers.AutoProcessor.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", spy)
    TransformersPolicy.from_pretrained(tiny_models["policy-qwen2_5_vl"], device="cpu")
    assert seen["trust_remote_code"] is False


def test_a_batch_gives_the_same_traces_as_single_runs(tiny_policy, tiny_segmenter):
    """Greedy decoding with left padding: batching must not change any answer."""
    agent = Agent(tiny_policy, tiny_segmenter, AgentConfig(parse_retries=0, input_size=(112, 112)))
    rng = np.random.default_rng(3)
    items = [AgentInput(rng.integers(0, 255, (60 + 10 * i, 80, 3), dtype=np.uint8), q)
             for i, q in enumerate(["the cat", "a red cup on the table", "dog", "what holds the books?"])]
    together = agent.run(items)
    alone = [agent.run([item])[0] for item in items]
    for a, b in zip(together, alone):
        assert [s.text for s in a.steps] == [s.text for s in b.steps]
        assert a.end_reason == b.end_reason
