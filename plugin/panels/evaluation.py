"""The evaluation panel: pick a SAM-Veteran evaluation (and optionally a second one to compare), see gIoU/cIoU,
the IoU after every step, the IoU histogram and the agent's stop rate per step; click a bar or a point to show
those samples in the grid, worst first.

Every plot point carries an id ``<eval_key>|<index>`` so a click says which evaluation and which bin or step it
was. What a click selects:
- a histogram bar: the samples whose final IoU falls in the bin, sorted by IoU;
- a curve point at step k: the samples that produced a mask at step k, sorted by their IoU after step k;
- a stop-rate bar at step k: the samples the agent stopped by itself after step k, sorted by final IoU.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

from ..curation.bands import IOU_BAND_EDGES, band_bounds, band_filter
from ..evaluation import RUN_TYPE, STAGING_SUFFIX
from ..metrics import get_convention

NONE = "(none)"
COLORS = ("#ff6d04", "#2b7bba")  # first and compared evaluation
PLOT_HEIGHT = 300


def reasonseg_evaluations(dataset) -> list[str]:
    """Keys of this plugin's evaluations on the dataset, without the staging key of one in progress (or killed)."""
    return [key for key in dataset.list_evaluations(type=RUN_TYPE) if not key.endswith(STAGING_SUFFIX)]


class EvaluationPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="sam_veteran_evaluation", label="SAM-Veteran: Evaluation", icon="ssid_chart",
                               surfaces="grid", help_markdown="gIoU / cIoU, the refinement curve, the IoU "
                               "histogram and stop rates of SAM-Veteran evaluations. Click a bar or point to "
                               "see those samples, worst first.")

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.set({"eval_key": None, "compare_key": None})
        self._refresh(ctx)

    def on_change_eval(self, ctx):
        ctx.panel.state.eval_key = ctx.params.get("value") or ctx.panel.state.eval_key
        self._refresh(ctx)

    def on_change_compare(self, ctx):
        ctx.panel.state.compare_key = ctx.params.get("value") or NONE
        self._refresh(ctx)

    def _refresh(self, ctx) -> None:
        """Re-read the chosen evaluations and push the summary (state) and the three plots (data)."""
        keys = reasonseg_evaluations(ctx.dataset)
        key = ctx.panel.state.eval_key if ctx.panel.state.eval_key in keys else (keys[0] if keys else None)
        compare = ctx.panel.state.compare_key if ctx.panel.state.compare_key in keys else NONE
        chosen = [k for k in (key, compare) if k and k != NONE]
        chosen = list(dict.fromkeys(chosen))
        results = {k: ctx.dataset.load_evaluation_results(k) for k in chosen}
        ctx.panel.state.set({"keys": keys, "eval_key": key, "compare_key": compare,
                             "summary": summary_markdown(results), "selection": None,
                             "last_step": max((len(r.step_curve()) - 1 for r in results.values()), default=0)})
        ctx.panel.data.set({"curve": curve_traces(results), "histogram": histogram_traces(results),
                            "stops": stop_traces(results)})

    def on_click_histogram(self, ctx):
        key, index = _point(ctx)
        view = ctx.dataset.load_evaluation_view(key).match(band_filter(f"{key}_iou", index)).sort_by(f"{key}_iou")
        low, high = band_bounds(index)
        closed = "]" if index == len(IOU_BAND_EDGES) - 2 else ")"
        self._show(ctx, view, f"{key}: final IoU in [{low:.1f}, {high:.1f}{closed}")

    def on_click_curve(self, ctx):
        key, step = _point(ctx)
        step_ious = F(f"{key}_step_ious")
        view = (ctx.dataset.load_evaluation_view(key).match(step_ious.length() > step)
                .sort_by(step_ious[step]))
        self._show(ctx, view, f"{key}: samples refined at step {step}, by IoU after that step")

    def on_click_stops(self, ctx):
        key, step = _point(ctx)
        mask_field = ctx.dataset.get_evaluation_info(key).config.mask_field
        stopped_here = F(f"{mask_field}.stopped_by_agent") & (F(f"{key}_step_ious").length() == step + 1)
        view = ctx.dataset.load_evaluation_view(key).match(stopped_here).sort_by(f"{key}_iou")
        self._show(ctx, view, f"{key}: samples the agent stopped after step {step}, by final IoU")

    def on_show_all(self, ctx):
        ctx.panel.state.selection = None
        ctx.ops.clear_view()

    def _show(self, ctx, view, description: str) -> None:
        ctx.panel.state.selection = f"{description}: {view.count()} samples, worst first"
        ctx.ops.set_view(view)

    def render(self, ctx):
        panel = types.Object()
        keys = ctx.panel.state.keys or []
        if not keys:
            panel.md("No SAM-Veteran evaluation on this dataset yet: run **SAM-Veteran: Evaluate** from the "
                     "operator browser, `sam_veteran.evaluate(dataset, \"veteran\")` or `sam-veteran eval`.",
                     name="empty")
            return types.Property(panel, view=types.GridView(orientation="vertical", columns=1, pad=2))
        pick = panel.h_stack("pick", align_x="left", gap=2)
        pick.enum("eval_key", keys, default=ctx.panel.state.eval_key, label="Evaluation",
                  view=types.DropdownView(), on_change=self.on_change_eval)
        pick.enum("compare_key", [NONE, *keys], default=ctx.panel.state.compare_key or NONE, label="Compare with",
                  view=types.DropdownView(), on_change=self.on_change_compare)
        panel.md(ctx.panel.state.summary or "", name="summary_text")
        if ctx.panel.state.selection:
            row = panel.h_stack("selection_row", align_x="left", gap=2)
            row.md(f"Showing {ctx.panel.state.selection}", name="selection_text")
            row.btn("show_all", label="Show all samples", on_click=self.on_show_all)
        last_step = ctx.panel.state.last_step or 0
        panel.md("**IoU after each step (last mask carried forward)**", name="curve_title")
        panel.plot("curve", on_click=self.on_click_curve, layout=_layout(
            "step (0 = box)", "IoU", _step_axis(last_step, pad=0.15), unit_range=True))
        panel.md("**Final IoU per sample**", name="histogram_title")
        panel.plot("histogram", on_click=self.on_click_histogram, layout=_layout(
            "IoU", "samples", {"range": [0, 1], "dtick": 0.2}))
        panel.md("**Share of samples the agent stopped by itself, per step**", name="stops_title")
        panel.plot("stops", on_click=self.on_click_stops, layout=_layout(
            "step (0 = box)", "share of samples", _step_axis(last_step, pad=0.5), unit_range=True))
        return types.Property(panel, view=types.GridView(orientation="vertical", columns=1, pad=2, gap=2))


def _step_axis(last_step: int, pad: float) -> dict:
    """An x axis over steps 0..last_step, one tick per step, starting at step 0 (bars need `pad` either side)."""
    return {"range": [-pad, last_step + pad], "tick0": 0, "dtick": 1, "zeroline": False}


def _layout(x_title: str, y_title: str, xaxis: dict, unit_range: bool = False) -> dict:
    """A plot filling its panel's width (the title is the markdown line above it: markdown wraps, plotly clips);
    the legend below the plot names each evaluation when two are compared."""
    yaxis = {"title": {"text": y_title}, **({"range": [0, 1.05]} if unit_range else {})}
    return {"height": PLOT_HEIGHT, "barmode": "group", "xaxis": {"title": {"text": x_title}, **xaxis},
            "yaxis": yaxis, "showlegend": True, "legend": {"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
            "margin": {"t": 10, "b": 10, "l": 50, "r": 10}}


def _point(ctx) -> tuple[str, int]:
    """(eval key, index) from a clicked point's id ``<eval_key>|<index>``."""
    key, index = str(ctx.params["id"]).rsplit("|", 1)
    return key, int(index)


def summary_markdown(results: dict) -> str:
    """One column per evaluation: protocol, gIoU, cIoU, items, the split by query type, the final stop share,
    NoC@85/90."""
    if not results:
        return ""
    rows = {"protocol": {}, "gIoU": {}, "cIoU": {}, "items": {}}
    for key, result in results.items():
        metrics = result.metrics()
        rows["protocol"][key] = result.protocol
        rows["gIoU"][key] = f"{metrics['gIoU']:.4f}"
        rows["cIoU"][key] = f"{metrics['cIoU']:.4f}"
        rows["items"][key] = str(metrics["count"])
        for name, split in result.by_query_type().items():
            rows.setdefault(f"{name} gIoU / cIoU", {})[key] = f"{split['gIoU']:.4f} / {split['cIoU']:.4f}"
        stops = result.stop_rates()
        if stops:
            rows.setdefault("stopped by the agent", {})[key] = f"{stops[-1]['cumulative_share']:.1%}"
        for name, value in (result.noc() or {}).items():
            rows.setdefault(f"{name} (clicks, cap 20)", {})[key] = f"{value:.2f}"
    keys = list(results)
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(values.get(k, "-") for k in keys) + " |" for name, values in rows.items()]
    return "\n".join(lines)


def curve_traces(results: dict) -> list[dict]:
    traces = []
    for (key, result), color in zip(results.items(), COLORS):
        curve = result.step_curve()
        steps = [p["step"] for p in curve]
        ids = [f"{key}|{s}" for s in steps]
        for metric, dash in (("gIoU", "solid"), ("cIoU", "dot")):
            if metric == "cIoU" and not get_convention(result.protocol).has_ciou:
                continue
            traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{key} {metric}", "x": steps,
                           "y": [p[metric] for p in curve], "ids": ids, "line": {"color": color, "dash": dash}})
    return traces


def histogram_traces(results: dict) -> list[dict]:
    traces = []
    for (key, result), color in zip(results.items(), COLORS):
        bins = result.histogram()
        traces.append({"type": "bar", "name": key, "x": [(b["low"] + b["high"]) / 2 for b in bins],
                       "y": [b["count"] for b in bins], "ids": [f"{key}|{i}" for i in range(len(bins))],
                       "width": 0.1 / len(results), "marker": {"color": color}})
    return traces


def stop_traces(results: dict) -> list[dict]:
    traces = []
    for (key, result), color in zip(results.items(), COLORS):
        stops = result.stop_rates()
        traces.append({"type": "bar", "name": f"{key} at this step", "x": [s["step"] for s in stops],
                       "y": [s["share"] for s in stops], "ids": [f"{key}|{s['step']}" for s in stops],
                       "marker": {"color": color}})
        traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{key} so far",
                       "x": [s["step"] for s in stops], "y": [s["cumulative_share"] for s in stops],
                       "ids": [f"{key}|{s['step']}" for s in stops], "line": {"color": color, "dash": "dot"}})
    return traces
