"""Pareto plots: score against cost per example, one curve or marker per method, the reference curve drawn first."""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure

from hashee_cli.flops import UNIT

# Fixed styles so that a method looks the same in every plot.
STYLES = {
    "static": {"color": "0.35", "marker": "s", "linestyle": "-"},
    "full": {"color": "black", "marker": "*", "linestyle": "none", "markersize": 13},
    "deebert": {"color": "tab:blue", "marker": "o", "linestyle": "-"},
    "pabee": {"color": "tab:orange", "marker": "^", "linestyle": "-"},
    "multi-exit": {"color": "tab:brown", "marker": "v", "linestyle": "none"},
}
HASHEE_COLORS = {"freq": "tab:red", "mi": "tab:purple", "random": "tab:green", "random-inconsistent": "tab:olive", "cluster": "tab:cyan"}


def _style(series: str) -> dict:
    if series in STYLES:
        return STYLES[series]
    if series.startswith("hashee"):
        hash_method = series.removeprefix("hashee").removeprefix("-")
        return {"color": HASHEE_COLORS.get(hash_method, "tab:pink"), "marker": "D", "linestyle": "--", "markersize": 8}
    return {"marker": "x", "linestyle": ":"}


def _label(series: str, reference: str) -> str:
    if series.startswith("hashee-"):
        label = f"HashEE ({series.removeprefix('hashee-')})"
    else:
        label = {"deebert": "DeeBERT", "pabee": "PABEE", "static": "static (first k layers)", "full": "full model"}.get(series, series)
    return label + (" [reference]" if series == reference else "")


def pareto_figure(group: pd.DataFrame, title: str, reference: str = "static") -> Figure:
    """Draw score (x 100) against MACs per example for the rows of one task; rows without a cost are left out.

    The static curve includes the full model as its deepest point.
    """
    points = group[group["flops_per_example"].notna()].copy()
    figure = Figure(figsize=(7, 4.8), layout="constrained")
    axes = figure.add_subplot()
    series_order = sorted(points["series"].unique(), key=lambda name: (name != reference, name != "static", name))
    for series in series_order:
        rows = points[points["series"] == series]
        if series == "static":
            rows = points[points["series"].isin(["static", "full"])]
        rows = rows.sort_values("flops_per_example")
        x = rows["flops_per_example"].to_numpy() / 1e6
        y = rows["score"].to_numpy() * 100
        style = dict(_style(series))
        if len(rows) == 1 and style.get("linestyle") not in (None, "none"):
            style["linestyle"] = "none"
        width = 2.2 if series == reference else 1.4
        axes.plot(x, y, label=_label(series, reference), linewidth=width, **style)
    counted = "flops_source" in points and len(points) and (points["flops_source"] == "counted").all()
    source = "counted by fvcore" if counted else "analytic"
    axes.set_xlabel(f"{UNIT} per example, {source} (millions; one multiply-add = 1)")
    metric = str(group["main_metric"].iloc[0]) if "main_metric" in group and len(group) else "score"
    axes.set_ylabel(f"{metric} (x 100)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(points):
        axes.legend(loc="lower right", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no run has a FLOPs figure", ha="center", va="center", transform=axes.transAxes)
    return figure


def figure_bytes(figure: Figure, file_format: str) -> bytes:
    """Render ``figure`` as PNG or SVG; the SVG carries no date, so equal inputs give equal files."""
    options = {"dpi": 150} if file_format == "png" else {"metadata": {"Date": None}}
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format, **options)
    return buffer.getvalue()
