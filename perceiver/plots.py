"""Every figure the project draws: a training run's curves, confusion matrix, ROC and reliability diagram (train.py,
calibration.py), and the attention overlays of an explained input (driver.py --explain) and of the HTML report's
cards (`attention_overlay`, on the same colour scale).

    python -m perceiver.plots goliath     # draws a run's acc.png, loss.png, confusion.png and reliability.png again from its
                                # history.csv and metrics.json (no model loaded; roc.png needs the model's logits)

Figures are matplotlib `Figure` objects on the Agg canvas (`_figure`), never pyplot: no global backend switch, no GUI,
nothing to close. The drawing functions return their figures, so tests can look at what was drawn. A run's figures
are written only when their bytes change (`write_if_changed`; the PNGs carry no matplotlib version), so drawing the
same numbers again leaves a committed run folder as it was.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys

import numpy as np
from PIL import Image

from perceiver import fileio
from perceiver import metrics
from perceiver import runs
from perceiver.errors import UsageError

CURVES = (("accuracy", runs.ACC_PLOT, "accuracy"), ("loss", runs.LOSS_PLOT, "loss"))  # (history key, file, what is plotted)
TEST_COLOUR = "#d62728"
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: the same figure is the same bytes
RELIABILITY_COLUMNS = metrics.RELIABILITY_COLUMNS  # calibration.reliability's rows


def _figure(**kwargs):
    """A matplotlib Figure drawn by Agg, the one backend this project uses (PNG files, no display)."""
    # matplotlib takes ~0.6 s to import; driver.py imports this module but draws only with --explain
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def write_if_changed(path, data):
    """Writes `data` (bytes, or str as UTF-8) to `path` atomically, unless the file already holds exactly those bytes.

    Returns:
        bool: whether the file was written.
    """
    path = pathlib.Path(path)
    data = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:  # missing or unreadable: written
        pass
    fileio.atomic_write_bytes(path, data)
    return True


def save_png(fig, path, **kwargs):
    """Writes `fig` as a PNG at `path` when its bytes differ from the file's (see `write_if_changed`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA, **kwargs)
    return write_if_changed(path, buf.getvalue())


# === A training run ===
def plot_run(run_dir, history, metrics):
    """Writes acc.png and loss.png (training and validation per epoch, the test value at the kept epoch) and
    confusion.png into run_dir.

    Args:
        run_dir: pathlib.Path. The run folder.
        history: list[dict]. One row per epoch: "epoch", "accuracy", "val_accuracy", "loss", "val_loss".
        metrics: dict. Test metrics as in metrics.json: "accuracy", "loss", "images", "confusion_matrix", and
            "best_epoch", the epoch whose weights were tested and kept.

    Returns:
        dict[str, Figure]: file name to the figure written.
    """
    figures = {name: _curve_figure(history, metrics, key, what) for key, name, what in CURVES}
    figures[runs.CONFUSION_PLOT] = _confusion_figure(metrics)
    for name, fig in figures.items():
        save_png(fig, pathlib.Path(run_dir) / name)
    return figures


def _curve_figure(history, metrics, key, what):
    """Training and validation `key` per epoch, and the test value of the kept epoch's weights as a star."""
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in history]
    best = int(metrics["best_epoch"])  # the test value belongs to the kept weights, not to the last epoch's
    fig = _figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    ax.plot(epochs, [float(r[key]) for r in history], "o-", label=f"training {what}", color="#1f77b4")
    ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], "s-", label=f"validation {what}", color="#ff7f0e")
    test_value = metrics[key]
    if test_value is not None:  # null when undefined (metrics' `*_undefined` fields say why): no star then
        ax.plot([best], [test_value], "*", markersize=16, color=TEST_COLOUR,
                label=f"test {what} at the kept epoch {best}: {test_value:.4f} ({metrics['images']} images, "
                      "held-out patients)")
        ax.axhline(test_value, color=TEST_COLOUR, linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 2.5
    ax.set_xlim(min(epochs + [best]) - 0.5, max(epochs + [best]) + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(what if key != "loss" else "loss (mean cross-entropy)")
    ax.set_title(f"Training and validation {what} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _confusion_figure(metrics):
    cm = np.array(metrics["confusion_matrix"]["counts"])
    classes = metrics["confusion_matrix"]["classes"]
    fig = _figure(figsize=(4.6, 4.0), dpi=110)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=13)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test confusion matrix (accuracy {metrics['accuracy']:.3f})")
    fig.tight_layout()
    return fig


def plot_roc(run_dir, logits, labels, classes):
    """Writes roc.png into run_dir: one curve per class against the rest (two classes: the second class only).

    Returns:
        Figure: the figure written.
    """
    # scipy and scikit-learn take ~1.2 s to import; driver.py imports this module and never draws a ROC
    from perceiver.metrics import roc_curve, softmax

    probs = softmax(logits)
    fig = _figure(figsize=(4.8, 4.4), dpi=110)
    ax = fig.subplots()
    targets = [1] if len(classes) == 2 else range(len(classes))
    for i in targets:
        fpr, tpr, auc = roc_curve(probs[:, i], labels == i)
        area = f"AUC {auc:.4f}" if np.isfinite(auc) else "AUC undefined: the test split lacks one side"
        ax.plot(fpr, tpr, label=f"{classes[i]} vs rest, {area}", linewidth=2)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Test ROC ({len(labels)} images)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, pathlib.Path(run_dir) / runs.ROC_PLOT)
    return fig


def plot_reliability(run_dir, before, after, temperature):
    """Writes reliability.png into run_dir: accuracy against confidence on the test split, before and after
    temperature scaling, one marker per bin of the top-class probability (no lines: a bin of a few images is a noisy
    point, not a trend), and below it the images in each bin.

    Args:
        run_dir: pathlib.Path. The run folder.
        before: list. Rows of `calibration.reliability` (lower, upper, confidence, accuracy, count) of the raw softmax.
        after: list. The same after temperature scaling.
        temperature: float. The fitted temperature.

    Returns:
        Figure: the figure written.
    """
    fig = reliability_figure(before, after, temperature)
    save_png(fig, pathlib.Path(run_dir) / runs.RELIABILITY_PLOT)
    return fig


def reliability_figure(before, after, temperature):
    """The figure of `plot_reliability`: the reliability panel over a panel of counts per bin, the legend below both."""
    series = ((before, "raw softmax", "#1f77b4", "o", -1), (after, f"temperature {temperature:.2f}", TEST_COLOUR, "s",
                                                               1))
    rows_all = [r for rows, *_ in series for r in rows]
    most = max([1] + [r[4] for r in rows_all])
    lo = min([0.45] + [r[0] for r in rows_all])
    fig = _figure(figsize=(6.4, 6.6), dpi=110)
    grid = fig.add_gridspec(2, 1, height_ratios=(3.0, 1.3), hspace=0.06, left=0.11, right=0.97, top=0.945,
                            bottom=0.21)
    ax, counts = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated (accuracy = confidence)")
    for rows, label, colour, marker, side in series:
        n = sum(r[4] for r in rows)
        ece = sum(r[4] / n * abs(r[3] - r[2]) for r in rows) if n else 0.0
        ax.scatter([r[2] for r in rows], [r[3] for r in rows], s=[16 + 184 * r[4] / most for r in rows],
                   color=colour, marker=marker, alpha=0.85, edgecolors="white", linewidths=0.5, zorder=3,
                   clip_on=False, label=f"{label}: ECE {ece:.4f}")
        width = min(r[1] - r[0] for r in rows) * 0.4 if rows else 0.02
        centres = [(r[0] + r[1]) / 2 + side * width / 2 for r in rows]
        bars = counts.bar(centres, [r[4] for r in rows], width=width, color=colour, alpha=0.85)
        counts.bar_label(bars, labels=[str(r[4]) for r in rows], fontsize=6, padding=1, color=colour)
    ax.set_xlim(lo, 1.015)
    ax.set_ylim(0.0, 1.05)
    ax.tick_params(labelbottom=False)
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"Reliability on the test split ({sum(r[4] for r in after)} images)")
    ax.grid(alpha=0.3)
    counts.set_xlim(lo, 1.015)
    counts.set_yscale("log")
    counts.set_ylim(0.7, most * 6)  # room for the count above the tallest bar
    counts.set_xlabel("confidence (top-class probability; markers at the bin mean)")
    counts.set_ylabel("images in the bin")
    counts.grid(alpha=0.3, axis="x")
    handles, labels = ax.get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False,
                        title="colour: before or after temperature scaling; marker area: images in the bin (counts "
                              "above the bars)", title_fontsize=7)
    for handle in legend.legend_handles:  # the legend's markers at one size: their area means nothing there
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([40])
    return fig


# === Attention overlays ===
BACKGROUND, FOREGROUND, EDGE = "#0d1117", "#e6edf3", "#30363d"


def display_size(h, w, longest=384, shortest=192):
    """(height, width) to show an h x w image at: scaled down to `longest` or up to `shortest`, aspect kept."""
    scale = min(longest / max(h, w), 1.0) if max(h, w) > longest else max(1.0, shortest / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _upsample(m, size):
    return np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((size[1], size[0]),
                                                                      Image.Resampling.BILINEAR))


def _mass_threshold(m, mass=0.5):
    """The value above which the largest cells of map m (summing to 1) hold `mass` of it, and their area fraction."""
    v = np.sort(m.ravel())[::-1]
    k = int(np.searchsorted(np.cumsum(v), mass * v.sum())) + 1
    return float(v[min(k, len(v)) - 1]), k / len(v)


def explain_figure(out_path, gray, maps, *, title, subtitle, flagged=False):
    """Writes a PNG: the input, then each cross-attend's map (mean over heads and latents) as a heat overlay.

    Maps are shown in units of "x uniform" (1 = the attention every pixel would get if spread evenly), on one colour
    scale shared by all panels; the dashed contour encloses the smallest region holding half the attention.

    Args:
        out_path: str. PNG to write.
        gray: np.ndarray. uint8 (h, w) image at display resolution.
        maps: np.ndarray. (num_cross_attends, gh, gw) attention on the model's grid, each summing to 1.
        title: str. First line (the file).
        subtitle: str. Second line (prediction, expected side).
        flagged: bool. Draws the subtitle in red. Defaults to False.

    Returns:
        Figure: the figure written.
    """
    n = len(maps)
    h, w = gray.shape
    relative = maps * (maps.shape[1] * maps.shape[2])  # x uniform
    scale = _heat_scale(relative)
    panel_w = 3.1
    fig_h = panel_w * h / w + 1.35
    fig = _figure(figsize=(panel_w * (n + 1) + 0.9, fig_h), facecolor=BACKGROUND)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    fig.subplots_adjust(left=0.02, right=0.9, top=1 - 1.0 / fig_h, bottom=0.35 / fig_h, wspace=0.05)
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    axes[0].set_title("input", color=FOREGROUND, fontsize=10)
    for i in range(n):
        _overlay_panel(axes[i + 1], gray, maps[i], relative[i], scale, title=f"cross-attend {i + 1}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(EDGE)
    _colour_bar(fig, scale, fig_h)
    fig.text(0.02, 1 - 0.22 / fig_h, title, color=FOREGROUND, fontsize=10, fontweight="bold", ha="left", va="top")
    fig.text(0.02, 1 - 0.5 / fig_h, subtitle, color="#ff7b72" if flagged else "#8b949e", fontsize=9, ha="left",
             va="top", fontweight="bold" if flagged else "normal")
    buf = io.BytesIO()  # written whole and atomically: a full disk leaves no half image (fileio)
    fig.savefig(buf, format="png", dpi=110, facecolor=BACKGROUND)
    fileio.atomic_write_bytes(out_path, buf.getvalue())
    return fig


def attention_overlay(gray, maps):
    """The input with the mean of its cross-attends' maps as heat on top, as explain_figure draws each one (the
    HTML report's small picture).

    Args:
        gray: np.ndarray. uint8 (h, w) image at display resolution.
        maps: np.ndarray. (num_cross_attends, gh, gw) attention on the model's grid, each summing to 1.

    Returns:
        np.ndarray: uint8 (h, w, 3) RGB.
    """
    mean = np.asarray(maps, np.float32).mean(axis=0)
    relative = mean * mean.size  # x uniform
    return np.round(_heat_rgb(gray, relative, _heat_scale(relative)) * 255).astype(np.uint8)


def _heat_scale(relative):
    """The colour scale of maps in x uniform: none at or below uniform, full at the 99.9th percentile (at least 1.5)."""
    import matplotlib  # lazy, like _figure's imports
    from matplotlib import cm, colors

    vmax = max(float(np.percentile(relative, 99.9)), 1.5)
    return cm.ScalarMappable(norm=colors.Normalize(vmin=1.0, vmax=vmax), cmap=matplotlib.colormaps["inferno"])


def _heat_rgb(gray, relative, scale):
    """Float RGB in [0, 1] (h, w, 3): the dimmed image, the map (x uniform, on the grid) upsampled over it as heat."""
    up = _upsample(relative, gray.shape)
    rgba = scale.cmap(scale.norm(up))
    strength = np.clip(scale.norm(up), 0, 1) ** 0.75
    dim = (0.35 + 0.65 * gray.astype(np.float32) / 255.0)[..., None] * 0.75  # the anatomy stays visible under heat
    return np.clip(dim * (1 - strength[..., None] * 0.85) + rgba[..., :3] * strength[..., None] * 0.85, 0, 1)


def _overlay_panel(ax, gray, m, relative, scale, *, title):
    """One cross-attend's map `m` (summing to 1; `relative`: the same in x uniform) as heat over the dimmed input."""
    h, w = gray.shape
    ax.imshow(_heat_rgb(gray, relative, scale), interpolation="bilinear")
    level, area = _mass_threshold(m)
    ax.contour(_upsample(m, (h, w)), levels=[level], colors=["#c9d1d9"], linewidths=0.7, linestyles="--", alpha=0.8)
    ax.set_title(title, color=FOREGROUND, fontsize=10)
    ax.text(0.02, 0.02, f"peak {relative.max():.1f}x  |  half the attention in {100 * area:.0f}% of the image",
            transform=ax.transAxes, color=FOREGROUND, fontsize=6.5, va="bottom", ha="left",
            bbox=dict(facecolor=BACKGROUND, alpha=0.6, edgecolor="none", pad=1.5))


def _colour_bar(fig, scale, fig_h):
    cax = fig.add_axes([0.915, 0.35 / fig_h + 0.03, 0.012, 1 - 1.35 / fig_h - 0.06])
    bar = fig.colorbar(scale, cax=cax)
    bar.set_label("attention (x uniform)", color=FOREGROUND, fontsize=8)
    bar.ax.tick_params(colors=FOREGROUND, labelsize=7)
    bar.outline.set_edgecolor(EDGE)


# === A run's figures again, from its files ===
def redraw_run(run_dir):
    """Draws a finished run's acc.png, loss.png and confusion.png (history.csv, metrics.json) and reliability.png
    (metrics.json's calibration section, when it holds the bins) again; roc.png needs the model's test logits and is
    left as it is. Each file is written only when its bytes change.

    Returns:
        list[str]: the names of the figures drawn.

    Raises:
        UsageError: when the folder has no history.csv or no readable metrics.json.
    """
    run_dir = pathlib.Path(run_dir)
    history = runs.read_history(run_dir / runs.HISTORY)
    if not history:
        raise UsageError(f"{run_dir} has no {runs.HISTORY}: pass a run folder written by train.py.")
    try:
        metrics = json.loads((run_dir / runs.METRICS).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{run_dir / runs.METRICS} cannot be read ({e}); pass a finished run folder.") from None
    drawn = list(plot_run(run_dir, history, metrics))
    c = metrics.get("calibration") or {}
    if "reliability" in c:
        plot_reliability(run_dir, c["reliability"]["before"], c["reliability"]["after"], c["temperature"])
        drawn.append(runs.RELIABILITY_PLOT)
    return drawn


def main(argv=None):
    return runs.folder_command(
        argv, prog="python -m perceiver.plots", description="Draw a finished run's figures again from its "
        "history.csv and metrics.json (no model loaded).",
        work=lambda args: f"drew {', '.join(redraw_run(args.run))} in {args.run}")


if __name__ == "__main__":
    sys.exit(main())
