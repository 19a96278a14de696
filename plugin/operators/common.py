"""What every SAM-Veteran operator shares: the target-view choice, the delegation default, progress, `__call__`.

An operator built on these helpers looks like::

    class MyOperator(foo.Operator):
        def resolve_input(self, ctx):
            inputs = types.Object()
            add_target_view(ctx, inputs, "Evaluate")
            ...
        def resolve_execution_options(self, ctx):
            return execution_options(ctx)
        def execute(self, ctx):
            view = target_view(ctx)
            ...
            yield from report_progress(ctx, done / total, "...")
            yield ctx.ops.reload_dataset()
        def __call__(self, sample_collection, ..., delegate=False):
            return call_operator(self.uri, sample_collection, {...}, delegate)
"""

from __future__ import annotations

import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionOptions

SMALL_RUN = 8  # runs on more samples than this default to delegated execution


def add_target_view(ctx, inputs, action: str = "Process") -> None:
    """The choice of samples: the whole dataset, the current view or the selected samples (when there are any)."""
    inputs.view_target(ctx, action_description=action)


def target_view(ctx):
    """The samples the user chose with `add_target_view` (the given view when called from Python)."""
    return ctx.target_view()


def execution_options(ctx, small_run: int = SMALL_RUN) -> ExecutionOptions:
    """Immediate and delegated execution are both offered; delegated is the default past `small_run` samples."""
    return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                            default_choice_to_delegated=target_view(ctx).count() > small_run)


def report_progress(ctx, fraction: float, label: str):
    """Progress for both modes: stored on the delegated operation, or streamed to the App (yield from this)."""
    if ctx.delegated:
        ctx.set_progress(progress=fraction, label=label)
        return
    yield ctx.trigger("set_progress", {"progress": fraction, "label": label})


def call_operator(uri: str, sample_collection, params: dict, delegate: bool = False):
    """Run an operator on a dataset or view from Python, immediately or queued for a delegated-operations worker."""
    return foo.execute_operator(uri, {"view": sample_collection.view(), "params": params},
                                request_delegation=delegate)
