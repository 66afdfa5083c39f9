"""Every figure the project draws: a training run's curves, confusion matrix, ROC and reliability diagram (train.py,
calibration.py), and the attention overlays of an explained input (driver.py --explain) and of the HTML report's
cards (`attention_overlay`, on the same colour scale).

Figures are matplotlib `Figure` objects on the Agg canvas (`_figure`), never pyplot: no global backend switch, no GUI,
nothing to close. The drawing functions return their figures, so tests can look at what was drawn.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CURVES = (("accuracy", "acc.png", "Accuracy"), ("loss", "loss.png", "Loss (mean cross-entropy)"))
TEST_COLOUR = "#d62728"


def _figure(**kwargs):
    """A matplotlib Figure drawn by Agg, the one backend this project uses (PNG files, no display)."""
    # matplotlib takes ~0.6 s to import; driver.py imports this module but draws only with --explain
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


# === A training run ===
def plot_run(run_dir, history, metrics):
    """Writes acc.png and loss.png (train and validation per epoch, the test value at the best epoch) and
    confusion.png into run_dir.

    Args:
        run_dir: pathlib.Path. The run folder.
        history: list[dict]. One row per epoch: "epoch", "accuracy", "val_accuracy", "loss", "val_loss".
        metrics: dict. Test metrics as in metrics.json: "accuracy", "loss", "images", "confusion_matrix", and
            "best_epoch", the epoch whose weights were tested.

    Returns:
        dict[str, Figure]: file name to the figure written.
    """
    figures = {name: _curve_figure(history, metrics, key, title) for key, name, title in CURVES}
    figures["confusion.png"] = _confusion_figure(metrics)
    for name, fig in figures.items():
        fig.savefig(run_dir / name)
    return figures


def _curve_figure(history, metrics, key, title):
    epochs = [int(r["epoch"]) for r in history]
    best = int(metrics["best_epoch"])  # the test value belongs to the best weights, not to the last epoch's
    fig = _figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    ax.plot(epochs, [float(r[key]) for r in history], "o-", label="train", color="#1f77b4")
    ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], "s-", label="validation", color="#ff7f0e")
    test_value = metrics[key]
    ax.plot([best], [test_value], "*", markersize=16, color=TEST_COLOUR,
            label=f"test (best weights, epoch {best}) {test_value:.3f}")
    ax.axhline(test_value, color=TEST_COLOUR, linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{title}: {metrics['images']} test images, held-out patients")
    ax.grid(alpha=0.3)
    ax.legend()
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
    from metrics import roc_curve, softmax

    probs = softmax(logits)
    fig = _figure(figsize=(4.8, 4.4), dpi=110)
    ax = fig.subplots()
    targets = [1] if len(classes) == 2 else range(len(classes))
    for i in targets:
        fpr, tpr, auc = roc_curve(probs[:, i], labels == i)
        ax.plot(fpr, tpr, label=f"{classes[i]} vs rest, AUC {auc:.4f}", linewidth=2)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Test ROC ({len(labels)} images)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "roc.png")
    return fig


def plot_reliability(run_dir, before, after, temperature):
    """Writes reliability.png into run_dir: accuracy against confidence on the test split, before and after
    temperature scaling (rows of `calibration.reliability`: lower, upper, confidence, accuracy, count).

    Returns:
        Figure: the figure written.
    """
    fig = _figure(figsize=(5.2, 4.6), dpi=110)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    for rows, label, colour, marker in ((before, "raw softmax", "#1f77b4", "o"),
                                        (after, f"temperature {temperature:.2f}", TEST_COLOUR, "s")):
        conf = [r[2] for r in rows]
        acc = [r[3] for r in rows]
        sizes = [20 + 180 * r[4] / max(1, max(q[4] for q in rows)) for r in rows]
        ax.plot(conf, acc, "-", color=colour, linewidth=1.2, alpha=0.7)
        ax.scatter(conf, acc, s=sizes, color=colour, marker=marker, label=label, zorder=3)
    ax.set_xlim(0.45, 1.01)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence (top-class probability, bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"Reliability on the test split ({sum(r[4] for r in after)} images)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "reliability.png")
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
    fig.savefig(out_path, dpi=110, facecolor=BACKGROUND)
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
