"""Plotly figures built from run events (plain ``scatter``, no WebGL: headless browsers have no GPU).

Several runs → one trace per run per chart, same colour for a run on every chart, legend = algorithm + model + seed.
No Streamlit import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")
MAX_POINTS = 1500  # per trace; longer step series are thinned evenly (the last point is always kept)
# epochs: passes over the fit images (step / steps per epoch), the SGA paper's protocol; image-gradients: forward +
# input-gradient backward over one image, the equal-cost one
X_AXES = {"step": "step", "epoch": "epochs (passes over the fit images)", "image_gradients": "image-gradients"}
_X_KEYS = {"step": "step", "epoch": "step", "image_gradients": "image_gradients_total"}


@dataclass(frozen=True)
class MetricSpec:
    key: str
    title: str
    kind: str  # "eval" or "step"
    y_title: str
    y_range: tuple[float, float] | None = None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("fooling_ratio", "Held-out fooling ratio", "eval", "fooling ratio", (0.0, 1.02)),
    MetricSpec("batch_fooling_ratio", "Batch fooling ratio (fit images)", "step", "fooling ratio", (0.0, 1.02)),
    MetricSpec("update_mean_cosine", "Stability: update vs the mean of the previous ones", "step", "cosine",
               (-1.05, 1.05)),
    MetricSpec("grad_cosine", "Gradient-cosine stability cos(gₜ, gₜ₋₁)", "step", "cosine", (-1.05, 1.05)),
    MetricSpec("budget_use", "Budget used: ‖δ‖₂ / ‖±eps corner‖₂", "step", "share of the corner", (0.0, 1.02)),
    MetricSpec("quantisation_error", "Quantisation error 1 − cos(g, sign g)", "step", "error", None),
    MetricSpec("loss", "Loss", "step", "loss", None),
    MetricSpec("sign_ops", "Sign operations applied to δ", "step", "count", None),
)


# The stability measure a page shows when it has room for one (Home's demo). Measured with
# ``python bench/stability.py --fit N --holdout N --epochs 3`` (CIFAR-10 ResNet-20, 8/255 L∞, 3 epochs each — the
# paper's protocol — seeds 0, 1, 2; mean ± s.d. over the seeds of each run's mean over its steps, budget use at the
# last step):
#                          update_mean_cosine  grad_cosine     budget_use      held-out FR
#   N 300  SGD-UAP B 10    0.133 ± 0.005       0.049 ± 0.014   0.769 ± 0.007   0.727 ± 0.044
#          SGA B 50 m10 K4 0.246 ± 0.029       0.155 ± 0.013   0.660 ± 0.019   0.610 ± 0.023
#   N 500  SGD-UAP B 10    0.151 ± 0.009       0.047 ± 0.003   0.770 ± 0.008   0.752 ± 0.027
#          SGA B 50 m10 K4 0.304 ± 0.013       0.211 ± 0.023   0.796 ± 0.009   0.752 ± 0.043
# (N 300: 120 CPU-seconds for all six runs, about a minute on 2 idle cores with the runs side by side as a race
# runs them.) Both cosines separate SGA from small-batch SGD-UAP on every seed, by gaps of 0.11–0.16; budget use
# does not (it follows the number of steps). The update's cosine to the running mean of the previous updates is
# the default: it separates as clearly, and it does not read as a flat line at 0 for SGD-UAP (its adjacent-step
# cosine, 0.05, does) — the chart the new user saw.
STABILITY_DEFAULT = "update_mean_cosine"


@dataclass
class RunSeries:
    """What a chart needs of one run: its legend label, colour and events (dicts of RunEvent.as_dict())."""

    label: str
    events: Sequence[dict[str, Any]]
    color: str
    running: bool = False
    group: str | None = None  # runs that differ only in their seed share a group: drawn as a mean line and band

    @property
    def steps_per_epoch(self) -> int:
        start = next((e for e in self.events if e["kind"] == "start"), None)
        return max(1, int(start.get("steps_per_epoch") or 1)) if start else 1

    @property
    def total_steps(self) -> int:
        start = next((e for e in self.events if e["kind"] == "start"), None)
        return int(start.get("total_steps") or 0) if start else 0

    def planned(self, x_axis: str = "step") -> int:
        """The planned end of the run on the x axis: steps, or image-gradients."""
        if x_axis == "step":
            return self.total_steps
        if x_axis == "epoch":
            return self.total_steps / self.steps_per_epoch
        start = next((e for e in self.events if e["kind"] == "start"), None)
        return int(start.get("planned_image_gradients") or 0) if start else 0

    @property
    def random_fooling_ratio(self) -> float | None:
        start = next((e for e in self.events if e["kind"] == "start"), None)
        return start.get("random_fooling_ratio") if start else None


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _per_epoch(events: Sequence[dict[str, Any]], x_axis: str) -> float:
    """The divisor that turns an event's x key into the axis' unit: steps per epoch on the epoch axis, else 1."""
    if x_axis != "epoch":
        return 1
    start = next((e for e in events if e["kind"] == "start"), None)
    return max(1, int(start.get("steps_per_epoch") or 1)) if start else 1


def series_points(events: Sequence[dict[str, Any]], kind: str, key: str,
                  x_axis: str = "step") -> tuple[list[float], list[float | None]]:
    """(x, values) of ``key`` in the events of ``kind``, x the step, the epochs (steps / steps per epoch) or the
    image-gradients spent so far (``x_axis``); NaN → gap; thinned to at most MAX_POINTS."""
    x_key, per = _X_KEYS[x_axis], _per_epoch(events, x_axis)
    rows = [(e.get(x_key, e["step"]) / per if per != 1 else e.get(x_key, e["step"]), _clean(e.get(key)))
            for e in events if e["kind"] == kind and key in e]
    if len(rows) > MAX_POINTS:
        stride = math.ceil(len(rows) / MAX_POINTS)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return [r[0] for r in rows], [r[1] for r in rows]


def _layout(fig: go.Figure, title: str, y_title: str, y_range: tuple[float, float] | None,
            height: int = 280, x_title: str = "step") -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 14}}, height=height, margin={"l": 50, "r": 10, "t": 40, "b": 40},
        xaxis_title=x_title, yaxis_title=y_title, legend={"orientation": "h", "y": -0.32, "font": {"size": 10}},
        hovermode="x unified", uirevision=title)
    if y_range:
        fig.update_yaxes(range=list(y_range))
    return fig


def metric_figure(runs: Sequence[RunSeries], spec: MetricSpec, show_random: bool = True,
                  height: int = 280, x_axis: str = "step") -> go.Figure:
    """One metric against step (or image-gradients spent: ``x_axis="image_gradients"``, the axis on which methods
    of different step costs compare fairly), a trace per run (held-out fooling ratio also shows each run's random
    baseline)."""
    fig = go.Figure()
    groups: dict[str, list[RunSeries]] = {}
    for run in runs:
        if run.group is not None:
            groups.setdefault(run.group, []).append(run)
    banded = {id(r) for members in groups.values() if len(members) > 1 for r in members}
    for name, members in groups.items():
        if len(members) > 1:
            _add_band(fig, name, members, spec, x_axis)
    for run in runs:
        if id(run) in banded:
            continue
        x, y = series_points(run.events, spec.kind, spec.key, x_axis)
        mode = "lines+markers" if spec.kind == "eval" or len(x) < 40 else "lines"
        fig.add_trace(go.Scatter(x=x, y=y, mode=mode, name=run.label, legendgroup=run.label,
                                 line={"color": run.color, "width": 2}, marker={"size": 6},
                                 connectgaps=False))
        baseline = run.random_fooling_ratio if show_random and spec.key == "fooling_ratio" else None
        if baseline is not None and x:
            fig.add_trace(go.Scatter(x=[0, max(max(x), run.planned(x_axis))], y=[baseline, baseline], mode="lines",
                                     name=f"{run.label}: random noise, same eps", legendgroup=run.label,
                                     line={"color": run.color, "dash": "dot", "width": 1}, showlegend=False,
                                     hovertemplate="random-noise baseline %{y:.2f}<extra></extra>"))
    fig = _layout(fig, spec.title, spec.y_title, spec.y_range, height, X_AXES[x_axis])
    # the x axis spans the planned steps, so a live chart fills up towards its end (integer ticks on short runs)
    last = max([r.planned(x_axis) for r in runs]
               + [max(series_points(r.events, spec.kind, spec.key, x_axis)[0], default=0) for r in runs] + [5])
    fig.update_xaxes(range=[0, last * 1.02])
    return fig


def _add_band(fig: go.Figure, name: str, members: Sequence[RunSeries], spec: MetricSpec, x_axis: str) -> None:
    """The runs of one group (the seeds of one setting): the min–max band and the mean line, both from
    :func:`uap_core.seeds.band` (the mean, min and max over the seeds at each step they all reached)."""
    from uap_core.seeds import band

    per = _per_epoch(members[0].events, x_axis)
    points = band([m.events for m in members], spec.key, spec.kind, "step" if x_axis == "epoch" else x_axis)
    x = [p["x"] / per for p in points]
    color = members[0].color
    label = f"{name} — mean of {len(members)} seeds"
    fig.add_trace(go.Scatter(x=x, y=[p["max"] for p in points], mode="lines", line={"width": 0, "color": color},
                             legendgroup=name, showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=[p["min"] for p in points], mode="lines", line={"width": 0, "color": color},
                             fill="tonexty", fillcolor=_translucent(color), legendgroup=name,
                             name=f"{name}: min–max over the seeds", showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=[p["mean"] for p in points], mode="lines+markers" if spec.kind == "eval" else "lines",
                             name=label, legendgroup=name, line={"color": color, "width": 2}, marker={"size": 6}))
    baseline = members[0].random_fooling_ratio if spec.key == "fooling_ratio" else None
    if baseline is not None and x:
        fig.add_trace(go.Scatter(x=[0, max(max(x), members[0].planned(x_axis))], y=[baseline, baseline],
                                 mode="lines", name=f"{name}: random noise", legendgroup=name, showlegend=False,
                                 line={"color": color, "dash": "dot", "width": 1}))


def _translucent(color: str, alpha: float = 0.2) -> str:
    """"#rrggbb" → "rgba(r, g, b, alpha)"."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def metric_spec(key: str) -> MetricSpec:
    return next(m for m in METRICS if m.key == key)


def histogram_figure(histogram: dict[str, Any], title: str = "Dominant labels", top: int = 10,
                     height: int = 320) -> go.Figure:
    """Bar chart of the perturbed top-1 labels (histogram as the core's ``LabelHistogram.as_dict()``: counts are
    [label, name, count] rows, sorted, with dominant_name / dominant_share)."""
    counts = list(histogram.get("counts") or [])[:top]
    total = histogram.get("total") or sum(c[2] for c in counts) or 1
    names = [f"{name} ({label})" for label, name, _ in counts]
    values = [count for _, _, count in counts]
    colors = ["#d62728"] + ["#8c9cb3"] * (len(values) - 1) if values else []
    rest = total - sum(values)
    if values and rest > 0:
        names.append("all other labels")
        values.append(rest)
        colors.append("#d9d9d9")
    shares = [count / total for count in values]
    fig = go.Figure(go.Bar(
        x=values[::-1], y=names[::-1], orientation="h", text=[f"{s:.0%}" for s in shares[::-1]],
        textposition="auto", marker={"color": colors[::-1]}, hovertemplate="%{y}: %{x} images<extra></extra>"))
    dominant = histogram.get("dominant_name")
    share = histogram.get("dominant_share") or 0.0
    subtitle = f"top label: {dominant} ({share:.0%} of {total} images)" if dominant else "no images"
    fig.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>", "font": {"size": 14}}, height=height,
                      margin={"l": 10, "r": 10, "t": 60, "b": 30}, xaxis_title="images", yaxis={"automargin": True},
                      uirevision=title)
    return fig


def transfer_heatmap(uap_names: Sequence[str], model_names: Sequence[str],
                     values: Sequence[Sequence[float | None]], title: str = "Fooling ratio: UAP × model") -> go.Figure:
    """The black-box table as a heatmap (rows: UAPs, columns: models; blank where a model could not be loaded)."""
    z = [[_clean(v) for v in row] for row in values]
    text = [["—" if v is None else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(model_names), y=list(uap_names), text=text, texttemplate="%{text}", zmin=0, zmax=1,
        colorscale="Reds", colorbar={"title": "fooling<br>ratio"},
        hovertemplate="UAP %{y}<br>model %{x}<br>fooling ratio %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=max(260, 70 * len(uap_names) + 140),
                      margin={"l": 10, "r": 10, "t": 50, "b": 40}, yaxis={"automargin": True, "autorange": "reversed"},
                      xaxis={"side": "bottom"})
    return fig
