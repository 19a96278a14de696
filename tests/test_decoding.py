"""The static-cache decoding path against eager `generate`: the same tokens, bucketed shapes, seeded sampling, and
the `decoding` argument through every entry point."""

import numpy as np
import pytest
import torch
from PIL import Image

from sam_veteran.plugin.agent import PolicyRequest, TransformersPolicy
from sam_veteran.plugin.agent.policy import CACHE_BUCKET, batch_bucket, cache_bucket, check_decoding
from sam_veteran.plugin.defaults import DECODINGS, DEFAULT_DECODING


pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = ["cat", "the dog on the left of the red sofa", "x", "what holds the books on the second shelf?", "a cup"]


def requests_for(policy: TransformersPolicy, seed: int = 0, count: int = 5) -> list[PolicyRequest]:
    """Requests of different prompt lengths and image sizes, grounding and refinement prompts mixed."""
    rng = np.random.default_rng(seed)
    out = []
    for i, query in enumerate(QUERIES[:count]):
        image = Image.fromarray(rng.integers(0, 255, (56 + 28 * (i % 3), 84, 3), dtype=np.uint8))
        prompt = policy.family.grounding_prompt(query) if i % 2 == 0 else policy.family.refine_prompt(query)
        out.append(PolicyRequest(image, prompt))
    return out


def tokens(answers: list[torch.Tensor], eos: int) -> list[list[int]]:
    """Each answer's tokens up to and including its end of answer (what follows is padding)."""
    out = []
    for answer in answers:
        ids = answer.tolist()
        out.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    return out


def pair(path, family=None, **kwargs) -> tuple[TransformersPolicy, TransformersPolicy]:
    eager = TransformersPolicy.from_pretrained(path, device="cpu", family=family, **kwargs)
    static = TransformersPolicy(eager.model, eager.processor, family=eager.family, decoding="static",
                                compile_backend=None, **kwargs)
    return eager, static


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "mini"])
def test_static_cache_gives_eager_tokens_for_every_family(tiny_models, family):
    """Greedy: the same tokens, with the batch padded to a bucket (5 -> 8 rows) and the cache to 256 tokens."""
    path = tiny_models[f"policy-{'qwen2_5_vl' if family == 'mini' else family}"]
    eager, static = pair(path, family=family if family == "mini" else None, max_new_tokens=24, batch_size=8)
    requests = requests_for(eager)
    eos = eager.model.generation_config.eos_token_id
    expected = tokens(eager.generate_ids(requests), eos)
    assert tokens(static.generate_ids(requests), eos) == expected
    assert static.generate(requests) == eager.generate(requests)
    assert any(len(t) > 4 for t in expected)  # answers long enough to compare many decoding steps


def test_static_buckets_batch_and_cache_shapes(tiny_models):
    """3 requests run as a batch of 4, 5 as 8; the cache length is a multiple of CACHE_BUCKET."""
    _, static = pair(tiny_models["policy-qwen2_5_vl"], max_new_tokens=6, batch_size=8)
    rows = []
    hook = static.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        assert len(static.generate(requests_for(static, count=3))) == 3
        assert set(rows) == {4}
        rows.clear()
        assert len(static.generate(requests_for(static, count=5))) == 5
        assert set(rows) == {8}
    finally:
        hook.remove()
    assert static.model._previous_max_cache_length % CACHE_BUCKET == 0
    assert [batch_bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert batch_bucket(11, 12) == 12 and batch_bucket(3, 3) == 3
    assert [cache_bucket(n) for n in (1, 256, 257, 700)] == [256, 256, 512, 768]


def test_sampling_stays_seeded_on_both_paths(tiny_models):
    eager, static = pair(tiny_models["policy-qwen3_vl"], max_new_tokens=12, batch_size=4)
    requests = requests_for(eager, count=4)  # a full bucket: no padding rows draw random numbers
    runs = {}
    for name, policy in (("eager", eager), ("static", static)):
        draws = []
        for _ in range(2):
            torch.manual_seed(7)
            draws.append(policy.generate(requests, sample=True))
        assert draws[0] == draws[1]
        runs[name] = draws[0]
    assert runs["static"] == runs["eager"]
    torch.manual_seed(8)
    assert static.generate(requests, sample=True) != runs["static"]  # the seed matters: it really samples


def test_compiled_static_path_matches_eager_without_recompiling(tiny_models):
    """The decoding step through `torch.compile` (the aot_eager backend: Dynamo's capture of the static-cache step
    without inductor's C++ build, which takes about a minute here; `bench/decoding.py` measures inductor): eager's
    tokens, and one graph for two prompt lengths in the same buckets."""
    from torch._dynamo.utils import counters

    eager, _ = pair(tiny_models["policy-qwen2_5_vl"], max_new_tokens=10, batch_size=2)
    compiled = TransformersPolicy(eager.model, eager.processor, decoding="static", compile_backend="aot_eager",
                                  max_new_tokens=10, batch_size=2)
    torch._dynamo.reset()
    counters.clear()
    eos = eager.model.generation_config.eos_token_id
    for requests in (requests_for(eager, count=2), requests_for(eager, count=5)[2:4]):  # two prompt lengths
        assert tokens(compiled.generate_ids(requests), eos) == tokens(eager.generate_ids(requests), eos)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_decoding_values_have_one_home_and_bad_values_are_refused(tiny_models):
    assert DEFAULT_DECODING == "eager" and DEFAULT_DECODING in DECODINGS
    assert [check_decoding(d) for d in DECODINGS] == list(DECODINGS)
    with pytest.raises(ValueError, match=r"unknown decoding 'fast'; choose one of eager, static"):
        TransformersPolicy.from_pretrained(tiny_models["policy-qwen2_5_vl"], device="cpu", decoding="fast")
    with pytest.raises(ValueError, match="token ids only, with no images"):
        check_decoding("continuous")
    from sam_veteran.plugin.agent.policy import load_policy

    with pytest.raises(ValueError, match="unknown decoding"):
        load_policy("oracle", decoding="compiled")


def test_decoding_reaches_the_policy_from_the_model_run_agent_and_the_cli(tiny_models):
    import fiftyone as fo

    from sam_veteran.cli import build_parser, models
    from sam_veteran.plugin.inference import run_agent
    from sam_veteran.plugin.model import SamVeteranModel

    model = SamVeteranModel(policy=str(tiny_models["policy-qwen2_5_vl"]), segmenter=str(tiny_models["segmenter"]),
                            device="cpu", decoding="static", compile_backend=None, max_new_tokens=8)
    assert model.agent.policy.decoding == "static"

    dataset = fo.Dataset()
    try:
        rng = np.random.default_rng(0)
        directory = tiny_models["segmenter"].parent
        for i in range(2):
            path = directory / f"decoding-{i}.png"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
            dataset.add_sample(fo.Sample(filepath=str(path), query=QUERIES[i]))
        common = dict(policy=str(tiny_models["policy-qwen2_5_vl"]), segmenter=str(tiny_models["segmenter"]),
                      device="cpu", max_new_tokens=8)
        run_agent(dataset, label_field="eager", **common)
        run_agent(dataset, label_field="static", decoding="static", compile_backend=None, **common)
        reasons = dataset.values("eager_mask.end_reason")
        assert None not in reasons and dataset.values("static_mask.end_reason") == reasons
        # only the static path compiles: there, a backend torch does not know fails each sample
        run_agent(dataset, label_field="unknown", decoding="static", compile_backend="no_such_backend", **common)
        assert all("no_such_backend" in error for error in dataset.values("unknown_mask.error"))
        with pytest.raises(ValueError, match="unknown decoding 'turbo'"):
            run_agent(dataset, label_field="bad", decoding="turbo", **common)
        assert not dataset.has_sample_field("bad_mask")
    finally:
        dataset.delete()

    args = build_parser().parse_args(["run", "ds", "--tiny", "--decoding", "static"])
    assert models(args, print)[2]["decoding"] == "static"
    assert build_parser().parse_args(["run", "ds"]).decoding == DEFAULT_DECODING
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "ds", "--decoding", "continuous"])


def test_the_run_form_offers_the_decodings_and_passes_the_choice_on(tmp_path):
    import uuid

    from fiftyone.operators.executor import ExecutionContext, Executor

    from agent_data import make_dataset
    from sam_veteran.plugin.operators.run_agent import RunSamVeteran

    dataset = make_dataset(tmp_path, 1, name=f"decoding-{uuid.uuid4().hex[:8]}")
    try:
        def context(params):
            return ExecutionContext(request_params={"dataset_name": dataset.name, "params": params},
                                    executor=Executor())

        choice = RunSamVeteran().resolve_input(context({})).type.properties["decoding"]
        assert choice.type.values == list(DECODINGS) and choice.default == DEFAULT_DECODING
        with pytest.raises(ValueError, match="unknown decoding 'turbo'"):
            next(RunSamVeteran()._runs(context({"decoding": "turbo"})))
    finally:
        dataset.delete()
