"""Figure and table helpers shared by the studies: aggregation over seeds, lines with error bands, heatmaps with
marked cells, an empty placeholder. Plotly is imported lazily (the CLI and the tests import studies without
drawing); everything here takes plain data (rows = flat dicts), as in a :class:`~.base.StudyResult`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Iterable, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")
RANDOM_COLOR = "#7f7f7f"


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """"#1f77b4", 0.2 → "rgba(31,119,180,0.2)" (band fills)."""
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def finite(value: Any) -> float | None:
    """A float, or None for None / NaN / inf / non-numbers (Plotly draws None as a gap)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def aggregate(rows: Iterable[dict[str, Any]], by: Sequence[str], value: str) -> list[dict[str, Any]]:
    """Group ``rows`` by the keys ``by`` (first-seen order) and summarise ``value`` over each group: mean, std
    (sample standard deviation; 0 for a single value), min, max and n (rows with a finite value)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in by)
        number = finite(row.get(value))
        groups.setdefault(key, [])
        if number is not None:
            groups[key].append(number)
    out = []
    for key, values in groups.items():
        entry = dict(zip(by, key))
        if values:
            entry.update(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                         min=min(values), max=max(values), n=len(values))
        else:
            entry.update(mean=None, std=None, min=None, max=None, n=0)
        out.append(entry)
    return out


def empty_figure(title: str, message: str = "no results yet"):
    """A blank figure with a centred note (a study that has not produced a row yet)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#888"})
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=360)
    return fig


def add_band_line(fig, x: Sequence[float], mean: Sequence[float | None], low: Sequence[float | None] | None,
                  high: Sequence[float | None] | None, name: str, line_color: str, row: int | None = None,
                  col: int | None = None, hover: str | None = None, dash: str | None = None,
                  showlegend: bool = True, legendgroup: str | None = None) -> None:
    """A line (markers at the points) with a shaded band between ``low`` and ``high`` (e.g. mean ± std, or
    min..max), as plain scatter traces (no WebGL). The band is drawn first, hidden from the legend."""
    import plotly.graph_objects as go

    where = {"row": row, "col": col} if row is not None else {}
    group = legendgroup or name
    if low is not None and high is not None and len(x) > 1:
        fig.add_trace(go.Scatter(x=list(x) + list(x)[::-1], y=list(high) + list(low)[::-1], fill="toself",
                                 fillcolor=rgba(line_color, 0.18), line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, legendgroup=group, name=f"{name} band"), **where)
    fig.add_trace(go.Scatter(x=list(x), y=list(mean), mode="lines+markers", name=name, legendgroup=group,
                             showlegend=showlegend, line={"color": line_color, "dash": dash},
                             marker={"color": line_color, "size": 7},
                             error_y=None, hovertemplate=hover), **where)
    if low is not None and high is not None and len(x) == 1:  # one point: an error bar instead of a band
        fig.data[-1].error_y = {"type": "data", "symmetric": False,
                                "array": [(h - m) if h is not None and m is not None else 0 for h, m in zip(high, mean)],
                                "arrayminus": [(m - lo) if lo is not None and m is not None else 0
                                               for lo, m in zip(low, mean)]}


def add_reference_line(fig, y: float, text: str, row: int | None = None, col: int | None = None) -> None:
    """A dashed horizontal line (e.g. the random-noise fooling ratio) with a label at its right end."""
    where = {"row": row, "col": col} if row is not None else {}
    fig.add_hline(y=y, line={"dash": "dash", "color": RANDOM_COLOR, "width": 1.5}, annotation_text=text,
                  annotation_position="bottom right", annotation_font={"color": RANDOM_COLOR, "size": 11}, **where)


def layout(fig, title: str, subtitle: str | None = None, height: int = 480) -> None:
    """Shared layout: title (with a smaller subtitle line), legend below the plot, white template."""
    text = f"{title}<br><sup>{subtitle}</sup>" if subtitle else title
    fig.update_layout(title={"text": text, "font": {"size": 15}}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 80, "b": 60},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0})


def heatmap(z: Sequence[Sequence[float | None]], x: Sequence[str], y: Sequence[str],
            marked: Callable[[int, int], bool] | None = None, mark_text: str = "white-box",
            zmin: float = 0.0, zmax: float = 1.0, colorbar_title: str = "fooling<br>ratio",
            row: int | None = None, col: int | None = None, fig=None, showscale: bool = True):
    """A heatmap of ``z[i][j]`` (rows ``y``, columns ``x``) with each value written in its cell; cells where
    ``marked(i, j)`` is true get a '*' and a box outline (e.g. white-box cells). Returns the figure."""
    import plotly.graph_objects as go

    if fig is None:
        fig = go.Figure()
    where = {"row": row, "col": col} if row is not None else {}
    clean = [[finite(v) for v in r] for r in z]
    text = [["—" if v is None else (f"{v:.2f}*" if marked and marked(i, j) else f"{v:.2f}")
             for j, v in enumerate(r)] for i, r in enumerate(clean)]
    custom = [[mark_text if marked and marked(i, j) else "black-box" for j in range(len(r))]
              for i, r in enumerate(clean)]
    fig.add_trace(go.Heatmap(z=clean, x=list(x), y=list(y), text=text, texttemplate="%{text}", zmin=zmin,
                             zmax=zmax, colorscale="Reds", showscale=showscale, customdata=custom,
                             colorbar={"title": colorbar_title},
                             hovertemplate="%{y} → %{x}<br>%{z:.3f} (%{customdata})<extra></extra>"), **where)
    if marked:
        for i in range(len(clean)):
            for j in range(len(clean[i])):
                if marked(i, j):
                    fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                                  xref=_axis_ref(fig, "x", row, col), yref=_axis_ref(fig, "y", row, col),
                                  line={"color": "#222", "width": 2})
    return fig


def _axis_ref(fig, axis: str, row: int | None, col: int | None) -> str:
    """The axis id ("x", "x2", …) of a subplot cell, for shapes drawn in data coordinates."""
    if row is None:
        return axis
    try:
        subplot = fig.get_subplot(row, col)
        anchor = getattr(subplot, f"{axis}axis").plotly_name  # "xaxis2"
        return anchor.replace("axis", "")
    except Exception:  # noqa: BLE001 - not a make_subplots figure
        return axis


def eps_text(eps: Any, norm: Any = "linf") -> str:
    """0.0392… → "10/255 L∞" (n/255 when it is one); L2 budgets as plain numbers ("7.84 L2")."""
    value = finite(eps)
    if value is None:
        return "?"
    if norm == "l2":
        return f"{value:.3g} L2"
    scaled = value * 255
    return (f"{round(scaled)}/255" if math.isclose(scaled, round(scaled), abs_tol=1e-6) else f"{value:.4g}") + " L∞"
