"""Tests of plots.py's run figures: what the curves and the reliability diagram say they show, where their legends
sit, and that drawing the same numbers again leaves the files as they were."""

import json
import os
import shutil

import pytest
from PIL import Image

from perceiver import plots
from perceiver import runs
from perceiver.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLIATH = os.path.join(REPO, "goliath")

# three epochs, the second kept: matplotlib's own ticks for 1..3 are 1.0, 1.25, ... 3.0
HISTORY = [{"epoch": e, "accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.6 + 0.05 * e, "loss": 1.0 / e,
            "val_loss": v} for e, v in zip((1, 2, 3), (0.9, 0.4, 0.5))]
METRICS = {"accuracy": 0.8, "loss": 0.45, "images": 10, "best_epoch": 2,
           "confusion_matrix": {"counts": [[4, 1], [1, 4]], "classes": ["left", "right"]}}
# bins as calibration.reliability gives them (lower, upper, confidence, accuracy, count): sparse low bins, one full
BEFORE = [[0.4667, 0.5333, 0.52, 0.5, 2], [0.6, 0.6667, 0.63, 1.0, 5], [0.9333, 1.0, 0.95, 1.0, 1217]]
AFTER = [[0.5333, 0.6, 0.57, 0.3333, 3], [0.7333, 0.8, 0.78, 1.0, 2], [0.9333, 1.0, 0.996, 1.0, 1343]]


def _ticks_shown(axis, limits):
    lo, hi = sorted(limits)
    return [t for t in axis.get_majorticklocs() if lo <= t <= hi]


def test_the_curves_say_what_they_plot_and_tick_whole_epochs(tmp_path):
    figures = plots.plot_run(tmp_path, HISTORY, METRICS)
    for name, what in (("acc.png", "accuracy"), ("loss.png", "loss")):
        ax = figures[name].axes[0]
        assert ax.get_title() == f"Training and validation {what} per epoch", name
        ticks = _ticks_shown(ax.xaxis, ax.get_xlim())
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        labels = [line.get_label() for line in ax.lines]
        assert f"training {what}" in labels and f"validation {what}" in labels
        (star,) = [line for line in ax.lines if line.get_marker() == "*"]
        assert star.get_label().startswith(f"test {what} at the kept epoch 2: ")
        assert "10 images" in star.get_label()


def test_the_reliability_diagram_draws_markers_counts_and_a_legend_off_the_data(tmp_path):
    fig = plots.plot_reliability(tmp_path, BEFORE, AFTER, 0.4)
    ax, counts = fig.axes
    # no line joins bins: the only line is the diagonal
    (diagonal,) = ax.lines
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    offsets = [c.get_offsets().tolist() for c in ax.collections]
    assert offsets == [[[r[2], r[3]] for r in BEFORE], [[r[2], r[3]] for r in AFTER]]
    sizes = ax.collections[0].get_sizes()
    assert sizes[2] > 5 * sizes[0]  # marker area grows with the count
    # every bin's count is drawn: a bar of that height, labelled with the number
    assert sorted(p.get_height() for p in counts.patches) == sorted(r[4] for r in BEFORE + AFTER)
    assert {t.get_text() for t in counts.texts} == {str(r[4]) for r in BEFORE + AFTER}
    # the legend says what marker colour and size mean, and covers neither panel
    (legend,) = fig.legends
    text = legend.get_title().get_text() + " " + " ".join(t.get_text() for t in legend.get_texts())
    assert "marker area: images in the bin" in text and "before or after temperature scaling" in text
    assert "perfectly calibrated" in text and "ECE" in text
    fig.canvas.draw()
    box = legend.get_window_extent()
    for panel in (ax, counts):
        assert not box.overlaps(panel.get_window_extent()), "the legend covers a panel"
    assert ax.get_ylim()[1] > 1.0 and ax.get_xlim()[1] > 1.0  # a marker at (1, 1) is inside


def test_drawing_the_same_figure_again_leaves_the_file_alone(tmp_path):
    plots.plot_reliability(tmp_path, BEFORE, AFTER, 0.4)
    path = tmp_path / "reliability.png"
    first, stamp = path.read_bytes(), path.stat().st_mtime_ns
    with Image.open(path) as im:
        assert "Software" not in im.info  # no matplotlib version: another version's identical figure is the same file
    fig = plots.reliability_figure(BEFORE, AFTER, 0.4)
    assert plots.save_png(fig, path) is False
    assert path.read_bytes() == first and path.stat().st_mtime_ns == stamp
    assert plots.save_png(plots.reliability_figure(BEFORE, AFTER, 0.5), path) is True
    assert path.read_bytes() != first
    assert plots.write_if_changed(tmp_path / "new.txt", "text") and (tmp_path / "new.txt").read_text() == "text"
    assert not list(tmp_path.glob(".tmp-*"))


def test_redrawing_a_run_from_its_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in (runs.HISTORY, runs.METRICS):
        shutil.copy(os.path.join(GOLIATH, name), run / name)
    assert plots.main([str(run)]) == 0
    drawn = ["acc.png", "loss.png", "confusion.png"]
    saved = json.loads((run / runs.METRICS).read_text())
    if "reliability" in saved.get("calibration", {}):
        drawn.append("reliability.png")
    assert capsys.readouterr().out.strip() == f"drew {', '.join(drawn)} in {run}"
    for name in drawn:  # goliath's figures drawn again: pixels differ between matplotlib versions, and the tight
        # bounding box by a pixel or two (3.8 drew confusion.png 505 pixels wide, 3.10 506), the layout does not
        with Image.open(run / name) as ours, Image.open(os.path.join(GOLIATH, name)) as shipped:
            assert all(abs(a - b) <= 3 for a, b in zip(ours.size, shipped.size)), (name, ours.size, shipped.size)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no history.csv"):
        plots.redraw_run(tmp_path / "empty")
    assert plots.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "has no history.csv" in err and err.count("\n") == 1
