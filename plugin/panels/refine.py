"""The refine panel (modal): correct the agent's mask on the current sample with clicks, save the correction as
``human`` steps, and let the agent continue from it. The work is `refine.py`'s, the SDK's own.

The image is drawn as the policy sees it (the mask painted in the agent's overlay style) under a transparent
heatmap that catches clicks: a click reports the heatmap cell's centre, in pixels of the original image, so on an
image wider than `CLICK_CELLS` pixels a click lands on a grid of ``ceil(width / CLICK_CELLS)`` pixels. The box
and the clicks so far are drawn on top. Every event replays the correction on the segmenter (one image embedding
per sample, cached in the App server process, with the models `default_models()` names, loaded once).

What a person is doing (the run, the step the correction starts from, the clicks not yet saved, the click sign)
lives in an `Editing` record in the App server process, found through a token kept in the panel's state. The
panel's own state cannot hold it: in a modal panel the App sends each event the state as it was when the panel
loaded, so anything an event writes there is lost by the next event (seen in Chromium with FiftyOne 1.22). For
the same reason every event redraws: the App renders the panel from the state the event ends with.
"""

from __future__ import annotations

import base64
import io
import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import fiftyone.operators as foo
import fiftyone.operators.types as types
from PIL import Image

from ..agent.overlay import OverlayStyle, policy_view
from ..defaults import DEFAULT_LABEL_FIELD
from ..labels import HUMAN, agent_runs
from ..refine import (continue_agent, default_models, policy_for, read_history, refine, refiner_for,
                      step_clicks)

CLICK_CELLS = 320  # clickable cells across the image's longer side
DISPLAY_SIDE = 768  # the longest side of the picture sent to the browser
FIGURE_HEIGHT = 460
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = "#00c853", "#ff1744", "#ff6d04"
REASONING_CHARS = 160
EDITINGS_KEPT = 64  # panels' editing records an App server keeps, most recently used


@dataclass
class Editing:
    """One panel's correction in progress on one sample."""

    sample_id: str | None = None
    label_field: str | None = None
    from_step: int | None = None  # None: the run's last stored step
    pending: list[tuple[float, float, bool]] = field(default_factory=list)  # clicks not yet saved, image pixels
    positive: bool = True
    message: str | None = None
    shown_step: int | None = None  # the step the panel shows the correction starting from

    def restart(self, sample_id: str | None) -> None:
        """A new sample (or the same one afresh): no correction in progress; the run and the click sign stay."""
        self.sample_id, self.from_step, self.pending, self.message = sample_id, None, [], None


_editings: OrderedDict[str, Editing] = OrderedDict()


def editing_for(ctx) -> Editing:
    """The panel's editing record: created at load (or when the server lost it), restarted when the modal moved
    to another sample."""
    token = ctx.panel.state.editing
    if token not in _editings:
        token = uuid.uuid4().hex
        ctx.panel.state.editing = token
        _editings[token] = Editing()
    _editings.move_to_end(token)
    while len(_editings) > EDITINGS_KEPT:
        _editings.popitem(last=False)
    editing = _editings[token]
    if editing.sample_id != ctx.current_sample:
        editing.restart(ctx.current_sample)
    return editing


class RefinePanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="sam_veteran_refine", label="SAM-Veteran: refine", icon="ads_click",
                               surfaces="modal", help_markdown="Click on the image to correct the agent's mask "
                               "(positive or negative), save the clicks as human steps, and let the agent "
                               "continue from the corrected mask.")

    def on_load(self, ctx):
        ctx.panel.state.editing = None  # a fresh record for a panel opened anew
        editing_for(ctx)
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        editing_for(ctx)
        self._refresh(ctx)

    def on_change_run(self, ctx):
        editing = editing_for(ctx)
        if ctx.params.get("value") and ctx.params["value"] != editing.label_field:
            editing.restart(editing.sample_id)
            editing.label_field = ctx.params["value"]
        self._refresh(ctx)

    def on_reset(self, ctx):
        """Start the correction from another stored step (the history stays)."""
        editing, value = editing_for(ctx), ctx.params.get("value")
        if value not in (None, "") and int(value) != editing.shown_step:  # the dropdown also reports its value
            editing.from_step, editing.pending = int(value), []               # when it is drawn again
            editing.message = f"Refining from step {value}."
        self._refresh(ctx)

    def on_toggle(self, ctx):
        editing_for(ctx).positive = bool(ctx.params.get("value"))
        self._refresh(ctx)

    def on_click_image(self, ctx):
        editing, x, y = editing_for(ctx), ctx.params.get("x"), ctx.params.get("y")
        if x is not None and y is not None:
            editing.pending.append((float(x), float(y), editing.positive))
            editing.message = f"{'Positive' if editing.positive else 'Negative'} click at ({x:g}, {y:g})."
        self._refresh(ctx)

    def on_undo(self, ctx):
        editing = editing_for(ctx)
        editing.pending, editing.message = editing.pending[:-1], "Last click undone."
        self._refresh(ctx)

    def on_save(self, ctx):
        self._guarded(ctx, self._save)

    def on_continue(self, ctx):
        self._guarded(ctx, self._continue)

    def _guarded(self, ctx, action) -> None:
        editing = editing_for(ctx)
        try:
            editing.message = action(ctx, editing)
        except Exception as exc:  # shown in the panel: it never goes blank
            editing.message = f"**Error:** {type(exc).__name__}: {exc}"
        self._refresh(ctx)

    def _save(self, ctx, editing: Editing) -> str:
        if not editing.pending:
            return "No new clicks to save."
        sample = ctx.dataset[editing.sample_id]
        refine(sample, editing.pending, label_field=editing.label_field, segmenter=_refiner(),
               from_step=editing.from_step)
        saved = len(editing.pending)
        editing.pending, editing.from_step = [], None
        ctx.ops.reload_samples()
        return f"Saved {saved} human step{'s' if saved > 1 else ''}."

    def _continue(self, ctx, editing: Editing) -> str:
        saved = self._save(ctx, editing) if editing.pending else ""
        sample = ctx.dataset[editing.sample_id]
        policy, _ = default_models()
        correction = continue_agent(sample, label_field=editing.label_field, policy=policy_for(policy),
                                    segmenter=_refiner(), from_step=editing.from_step)
        editing.from_step = None
        ctx.ops.reload_samples()
        added = sum(step.mask is not None for step in correction.new)
        end = correction.trace.end_reason.value
        return f"{saved} The agent ({policy}) added {added} step{'' if added == 1 else 's'} and ended: {end}.".strip()

    def _refresh(self, ctx) -> None:
        """Replay the correction on the current sample and push the figure and the step list; any problem becomes
        the panel's error message."""
        editing = editing_for(ctx)
        ctx.panel.state.set({"error": None, "steps_md": None, "figure_layout": None, "message": editing.message,
                             "positive": editing.positive, "pending": [list(click) for click in editing.pending]})
        ctx.panel.data.set({"figure": []})
        try:
            self._draw(ctx, editing)
        except Exception as exc:  # shown in the panel: it never goes blank
            ctx.panel.state.error = f"{type(exc).__name__}: {exc}"

    def _draw(self, ctx, editing: Editing) -> None:
        if not editing.sample_id:
            raise ValueError("open a sample: this panel works on the sample shown in the modal")
        sample = ctx.dataset[editing.sample_id]
        runs = agent_runs(ctx.dataset)
        if not runs:
            raise ValueError("no agent run on this dataset: run SAM-Veteran: Run agent first")
        editing.label_field = next(r for r in (editing.label_field, DEFAULT_LABEL_FIELD, runs[0]) if r in runs)
        ctx.panel.state.set({"runs": runs, "label_field": editing.label_field})
        history = read_history(sample, editing.label_field)
        correction = _refiner().start(history, editing.from_step)
        for x, y, positive in editing.pending:
            correction.click(x, y, positive)
        editing.shown_step = correction.from_step
        ctx.panel.state.set({"steps": [str(i) for i in history.steps], "from_step": correction.from_step,
                             "steps_md": steps_markdown(history, correction),
                             "query": f"**{editing.label_field}** on *{history.query or '(no query)'}*"})
        traces, layout = figure(correction)
        ctx.panel.state.figure_layout = layout
        ctx.panel.data.set({"figure": traces})

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        if state.query:
            panel.md(state.query, name="query_line")
        if state.error:
            panel.md(f"**Error:** {state.error}", name="error_line")
        if state.figure_layout:
            panel.plot("figure", layout=state.figure_layout, on_click=self.on_click_image,
                       config={"displayModeBar": False, "scrollZoom": False, "doubleClick": False})
        controls = panel.h_stack("controls", align_x="left", align_y="center", gap=2)
        controls.bool("positive", default=state.positive is not False, label="Positive click",
                      view=types.SwitchView(), on_change=self.on_toggle)
        controls.btn("undo", label="Undo click", on_click=self.on_undo, disabled=not state.pending)
        controls.btn("save", label="Save", variant="contained", on_click=self.on_save, disabled=not state.pending)
        controls.btn("continue", label="Let the agent continue", variant="outlined", on_click=self.on_continue,
                     disabled=not state.steps)
        if state.steps:
            picks = panel.h_stack("picks", align_x="left", gap=2)
            # named by what it shows, so a new history or start step draws a new dropdown rather than one still
            # holding the value the App sent with the panel's loaded state
            picks.enum(f"from_step_{state.from_step}_of_{len(state.steps)}", state.steps,
                       default=str(state.from_step), label="Refine from step",
                       view=types.DropdownView(), on_change=self.on_reset)
            if len(state.runs or []) > 1:
                picks.enum("label_field", state.runs, default=state.label_field, label="Run",
                           view=types.DropdownView(), on_change=self.on_change_run)
        if state.message:
            panel.md(state.message, name="message_line")
        if state.steps_md:
            panel.md(state.steps_md, name="steps_table")
        return types.Property(panel, view=types.GridView(orientation="vertical", columns=1, pad=2, gap=2))


def _refiner():
    return refiner_for(default_models()[1])


def figure(correction) -> tuple[list[dict], dict]:
    """Plotly traces (the click-catching heatmap, the box, the clicks) and a layout with the overlaid image."""
    width, height = correction.history.image_size
    cell = max(1, math.ceil(max(width, height) / CLICK_CELLS))
    columns, rows = math.ceil(width / cell), math.ceil(height / cell)
    catcher = {"type": "heatmap", "name": "image", "z": [[0] * columns for _ in range(rows)],
               "x0": cell / 2, "dx": cell, "y0": cell / 2, "dy": cell, "showscale": False, "zmin": 0, "zmax": 1,
               "colorscale": [[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]],
               "hovertemplate": "x %{x:.0f}, y %{y:.0f}<extra></extra>"}
    x1, y1, x2, y2 = correction.path[0].box
    box = {"type": "scatter", "mode": "lines", "name": "box", "x": [x1, x2, x2, x1, x1], "y": [y1, y1, y2, y2, y1],
           "line": {"color": BOX_COLOR, "width": 2}, "hoverinfo": "skip"}
    traces = [catcher, box]
    clicks = [(point, positive) for step in correction.path + correction.new for point, positive in step_clicks(step)]
    for positive, color, symbol in ((True, POSITIVE_COLOR, "circle"), (False, NEGATIVE_COLOR, "x")):
        points = [point for point, is_positive in clicks if is_positive == positive]
        traces.append({"type": "scatter", "mode": "markers", "name": "positive" if positive else "negative",
                       "x": [p[0] for p in points], "y": [p[1] for p in points], "hoverinfo": "skip",
                       "marker": {"color": color, "symbol": symbol, "size": 11,
                                  "line": {"color": "white", "width": 1.5}}})
    layout = {"height": FIGURE_HEIGHT, "margin": {"t": 0, "b": 0, "l": 0, "r": 0}, "dragmode": False,
              "hovermode": "closest", "showlegend": False,
              "xaxis": {"range": [0, width], "visible": False, "constrain": "domain", "fixedrange": True},
              "yaxis": {"range": [height, 0], "visible": False, "scaleanchor": "x", "constrain": "domain",
                        "fixedrange": True},
              "images": [{"source": overlay_uri(correction), "xref": "x", "yref": "y", "x": 0, "y": 0,
                          "sizex": width, "sizey": height, "sizing": "stretch", "layer": "below"}]}
    return traces, layout


def overlay_uri(correction) -> str:
    """The image with the current mask painted as the policy sees it, as a PNG data URI."""
    height, width = correction.image.shape[:2]
    picture = policy_view(correction.image, (width, height), correction.mask, OverlayStyle(), resized=None)
    scale = min(1.0, DISPLAY_SIDE / max(width, height))
    if scale < 1:
        picture = picture.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def steps_markdown(history, correction) -> str:
    """The steps as a table: stored ones (the path to the current step marked), then the unsaved clicks."""
    on_path = {step.index for step in correction.path}
    lines = ["| step | by | action | SAM score | reasoning |", "|---|---|---|---|---|"]
    for index, stored in history.steps.items():
        marker = " ◀" if index == correction.from_step else (" ·" if index in on_path else "")
        lines.append(_row(f"{index}{marker}", stored.source, stored.step))
    for step in correction.new:
        lines.append(_row(f"{step.index} (unsaved)", HUMAN, step))
    return "\n".join(lines)


def _row(label: str, source: str, step) -> str:
    reasoning = " ".join(step.reasoning.split())
    reasoning = reasoning if len(reasoning) <= REASONING_CHARS else reasoning[: REASONING_CHARS - 1] + "…"
    score = f"{step.score:.3f}" if step.score is not None else "-"
    action = step.action.value if step.action else "-"
    return f"| {label} | {source} | {action} | {score} | {reasoning.replace('|', '/') or '-'} |"
