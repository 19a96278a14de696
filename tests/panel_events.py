"""One Python panel event run as the App runs it: the handler, then render, for the panel tests."""

from fiftyone.operators.executor import ExecutionContext, Executor


def panel_event(panel, dataset, method: str, state: dict, current_sample: str | None = None, **params):
    """Returns (the panel state after the event, the requests it sent, by operator)."""
    executor = Executor()
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "current_sample": current_sample, "params": {
        "panel_id": "panel-1", "panel_state": state, "__method__": method, **params}}, executor=executor)
    panel.execute(ctx)
    requests = {}
    for request in executor._requests:
        requests.setdefault(request.operator_uri, []).append(request.params)
    return ctx.panel_state, requests
