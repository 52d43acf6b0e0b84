"""Study-level pictures for the parent run, from plain numbers.

`points`: one dict per trained trial, {"trial", "label", "values": {metric: value},
"pareto": bool}. The first two objectives are the axes (accuracy against a cost, log scale).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.io as pio
from matplotlib.figure import Figure  # drawn to bytes: no pyplot, no global backend
from matplotlib.ticker import EngFormatter, LogFormatter


def _figure(ncols: int = 1, margins: Mapping[str, float] | None = None, **kwargs):
    """`margins` (fractions of the figure) for a figure whose labels have a known size:
    tight_layout measures every tick label, 40% of drawing a 5,000-point front."""
    fig = Figure(**kwargs)
    if margins is not None:
        fig.subplots_adjust(**margins)
    return fig, fig.subplots(1, ncols)


def _axes(points: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    metrics = list(points[0]["values"])
    cost = next((m for m in metrics if m != "val_acc"), "val_acc")
    return cost, "val_acc"


def pareto_png(points: Sequence[Mapping[str, Any]], title: str) -> bytes:
    fig, ax = _figure(figsize=(7, 4.5), dpi=120,
                      margins=dict(left=0.1, right=0.97, bottom=0.12, top=0.86))
    if points:
        x_key, y_key = _axes(points)
        for on_front, style in ((False, dict(color="0.6", s=18, label="trials")),
                                (True, dict(color="C3", s=36, label="Pareto front"))):
            sel = [p for p in points if bool(p["pareto"]) == on_front]
            ax.scatter([p["values"][x_key] for p in sel], [p["values"][y_key] for p in sel],
                       **style)
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p["values"][x_key])
        ax.step([p["values"][x_key] for p in front], [p["values"][y_key] for p in front],
                where="post", color="C3", linewidth=1)
        if x_key != "val_acc":
            _log_x(ax)
        ax.set_xlabel(x_key)
        ax.set_ylabel(y_key)
        # above the axes, never over a point (loc="best" tests every point: 60 ms at 5,000)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False,
                  borderaxespad=0.2)
    fig.suptitle(title, x=0.1, y=0.97, ha="left")  # above the legend, however long
    return _png(fig)


def pareto_html(points: Sequence[Mapping[str, Any]], title: str) -> str:
    # a plain figure dict, not validated: plotly's graph objects load their validators (a
    # 0.3 s JSON parse) the first time a process draws one
    traces, layout = [], {"title": {"text": title}}
    if points:
        x_key, y_key = _axes(points)
        for on_front, name, color in ((False, "trials", "gray"), (True, "Pareto front", "red")):
            sel = [p for p in points if bool(p["pareto"]) == on_front]
            traces.append({"type": "scatter", "mode": "markers", "name": name,
                           "marker": {"color": color},
                           "x": [p["values"][x_key] for p in sel],
                           "y": [p["values"][y_key] for p in sel],
                           "text": [f"#{p['trial']} {p['label']}" for p in sel]})
        layout["xaxis"] = {"title": {"text": x_key},
                           "type": "log" if x_key != "val_acc" else "linear"}
        layout["yaxis"] = {"title": {"text": y_key}}
    return pio.to_html({"data": traces, "layout": layout}, include_plotlyjs="cdn",
                       full_html=True, validate=False)


def hypervolume_png(by_trials: Sequence[tuple[int, float]],
                    by_seconds: Sequence[tuple[float, float]], device: str) -> bytes:
    fig, (left, right) = _figure(2, figsize=(10, 4), dpi=120,
                                 margins=dict(left=0.08, right=0.98, bottom=0.14, top=0.95))
    left.plot([n for n, _ in by_trials], [h for _, h in by_trials], drawstyle="steps-post")
    left.set_xlabel("trials finished")
    left.set_ylabel("hypervolume")
    right.plot([s / 3600 for s, _ in by_seconds], [h for _, h in by_seconds],
               drawstyle="steps-post")
    right.set_xlabel(f"{device}-hours of training")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _png(fig)


def importances_png(importances: Mapping[str, float]) -> bytes:
    names = list(importances)[::-1]
    fig, ax = _figure(figsize=(6, 0.35 * len(names) + 1.2), dpi=120)
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance for val_acc (fANOVA)")
    fig.tight_layout()  # the parameters' names: their width is not known here
    return _png(fig)


def _log_x(ax) -> None:
    """A log-scale x axis labelled 10k, 1M, 100M in plain text (matplotlib's 10^5 labels are
    typeset by its mathtext parser, a third of drawing a front), as costs are read; the
    minor ticks labelled as matplotlib's own log formatter chooses (a view of less than a
    decade has no major tick)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_EngLogFormatter())
    ax.xaxis.set_minor_formatter(_EngLogFormatter(labelOnlyBase=False))


class _EngLogFormatter(LogFormatter):
    """LogFormatter's choice of ticks, EngFormatter's text (through LogFormatter's one
    private hook for the text; tests/tracking/test_plots.py fails if it moves)."""
    _text = EngFormatter(sep="")

    def _num_to_string(self, x, vmin, vmax):
        return self._text(x)


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")  # a Figure without pyplot is freed with its last ref
    return out.getvalue()
