"""A policy that answers from a script, for testing the loop's step logic with exact answers.

A tiny random-weight policy answers noise, so the loop's branches (clicks, stop, repairs) need answers chosen by
the test; everything else in those tests (segmenter, overlay, parsing) is the real code.
"""

from sam_veteran.plugin.agent import FAMILIES, ModelFamily, PolicyRequest


class ScriptedPolicy:
    """`answers(query, step, sampled)` returns the text for one request; every request is recorded."""

    def __init__(self, answers, family: ModelFamily = FAMILIES["qwen2_5_vl"]):
        self.answers = answers
        self.family = family
        self.calls: list[tuple[str, int, bool]] = []
        self.batch_sizes: list[int] = []
        self.images = []

    def generate(self, requests: list[PolicyRequest], sample: bool = False) -> list[str]:
        self.batch_sizes.append(len(requests))
        out = []
        for request in requests:
            query = request.prompt.split('"')[1]
            step = 0 if "bbox_2d" in request.prompt and "positive_point" not in request.prompt else 1
            step = step if step == 0 else sum(1 for q, s, _ in self.calls if q == query and s > 0) + 1
            self.calls.append((query, step, sample))
            self.images.append(request.image)
            out.append(self.answers(query, step, sample))
        return out


def box_answer(box) -> str:
    return f'<think>it is there</think><answer>{{"bbox_2d": {list(box)}}}</answer>'


def click_answer(positive=None, negative=None) -> str:
    to_json = lambda p: "null" if p is None else str(list(p))  # noqa: E731
    return (f'<think>look</think><answer>{{"positive_point": {to_json(positive)}, '
            f'"negative_point": {to_json(negative)}}}</answer>')
