"""The parent run's interactive front: the figure plotly's page draws, read back from it."""

import json
import re

from tracking.plots import pareto_html

POINTS = [{"trial": 3, "label": "h64 d2", "values": {"val_acc": 0.61, "macs": 2e6},
           "pareto": True},
          {"trial": 7, "label": "h128 d4", "values": {"val_acc": 0.55, "macs": 9e6},
           "pareto": False}]


def _figure(html: str) -> tuple[list, dict]:
    """The data and layout passed to Plotly.newPlot in the page."""
    call = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{",
                     html, re.S)
    assert call, "no Plotly.newPlot call in the page"
    return json.loads(call.group(1)), json.loads(call.group(2))


def test_the_front_page_has_both_traces_on_a_log_cost_axis():
    html = pareto_html(POINTS, "study: 2 trained, 1 on the front")
    data, layout = _figure(html)
    by_name = {trace["name"]: trace for trace in data}
    assert by_name["Pareto front"]["text"] == ["#3 h64 d2"]
    assert by_name["trials"]["text"] == ["#7 h128 d4"]
    assert by_name["Pareto front"]["marker"]["color"] == "red"
    costs = by_name["Pareto front"]["x"] + by_name["trials"]["x"]
    accuracies = by_name["Pareto front"]["y"] + by_name["trials"]["y"]
    assert sorted(costs) == [2e6, 9e6] and sorted(accuracies) == [0.55, 0.61]
    assert layout["xaxis"]["type"] == "log" and layout["xaxis"]["title"]["text"] == "macs"
    assert layout["yaxis"]["title"]["text"] == "val_acc"
    assert layout["title"]["text"] == "study: 2 trained, 1 on the front"
    assert "cdn.plot.ly" in html  # plotly.js from its CDN, not 3 MB in each artifact


def test_an_empty_study_draws_an_empty_page():
    data, layout = _figure(pareto_html([], "study: nothing trained yet"))
    assert data == [] and layout["title"]["text"] == "study: nothing trained yet"


def test_a_log_cost_axis_is_labelled_in_plain_text_within_a_decade_and_across_many():
    """The front's cost axis reads 10k, 1M (no mathtext), and a view of less than one decade
    (no major tick in it) still has labels."""
    from matplotlib.figure import Figure

    from tracking.plots import _log_x

    for low, high, expected in ((2e5, 8e5, {"300k", "400k"}), (1e4, 1e7, {"100k", "1M"})):
        fig = Figure()
        ax = fig.subplots()
        ax.scatter([low, high], [0.1, 0.9])
        _log_x(ax)
        fig.canvas.draw()
        labels = {t.get_text() for t in ax.xaxis.get_ticklabels(which="both")} - {""}
        assert expected <= labels, labels
        assert not any("$" in label for label in labels)
