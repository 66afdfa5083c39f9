"""Novelty: how unlike the training images an input is, from what the classifier itself computes (issue 29, step 1).

A temperature rescales confidence on images like the validation split and says nothing about images unlike it (a brain,
a photograph, an inverted export): a classifier gives those a confident side. A novelty score, fitted on the training
split's features and thresholded on the validation split, tells them apart. Three known scores are here; each is
"higher is more novel":

- "mahalanobis": the smallest Mahalanobis distance from the pooled latents (`Perceiver.features`) to a class mean,
  under one covariance shared by the classes (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution
  Samples and Adversarial Attacks", NeurIPS 2018). The covariance is shrunk a little towards its diagonal's mean, so
  that it inverts with few training images.
- "knn": the distance to the K-th nearest training feature, features L2-normalised (Sun et al., "Out-of-Distribution
  Detection with Deep Nearest Neighbors", ICML 2022).
- "energy": minus the log-sum-exp of the logits over the classes (Liu et al., "Energy-based Out-of-distribution
  Detection", NeurIPS 2020): from the logits alone, no features.

The threshold is the PASS_SHARE quantile of the validation split's scores, so that share of validation images (99%)
pass; an input whose score is above it is novel. Which score is the default, and how each does on images unlike the
training ones, is measured by the benchmark that comes with the next step (bench/experiments/novelty.py).

    model = fit("mahalanobis", train_features, train_labels, val_features)
    scores = score(model, features)            # (n,) float64, higher is more novel
    novel = scores > model.threshold
    save(model, "run/novelty.npz"); model = load("run/novelty.npz")   # checksummed like the weights (runs.py)
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from scipy import special

from perceiver import fileio
from perceiver import runs
from perceiver.errors import UsageError

METHODS = ("mahalanobis", "knn", "energy")
PASS_SHARE = 0.99  # of the validation split's images under the threshold
K = 10  # the knn score's neighbour
SHRINK = 0.01  # the shared covariance is (1 - SHRINK) * sample covariance + SHRINK * mean variance * identity
FORMAT = 1  # novelty.npz's layout


@dataclasses.dataclass(frozen=True)
class NoveltyModel:
    """A fitted novelty score.

    Args:
        method: str. One of METHODS.
        threshold: float. Scores above it are novel.
        pass_share: float. The share of validation images the threshold lets pass.
        arrays: dict of str to np.ndarray. What the score needs: class means and the covariance's inverse
            ("mahalanobis"), the normalised training features ("knn"); nothing for "energy".
    """

    method: str
    threshold: float
    pass_share: float
    arrays: dict


def _check(method, features=None, name="features"):
    if method not in METHODS:
        raise ValueError(f"novelty method must be one of {', '.join(METHODS)}, got {method!r}.")
    if features is not None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or not np.isfinite(features).all():
            raise ValueError(f"{name} must be a finite (n, d) array, got {features.dtype} {features.shape}.")
    return features


def _normalised(features):
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def fit(method, train_features, train_labels, val_features, *, train_logits=None, val_logits=None,
        pass_share=PASS_SHARE):
    """Fits `method` on the training split and its threshold on the validation split.

    Args:
        method: str. One of METHODS.
        train_features, val_features: (n, d) arrays: `Perceiver.features` of the two splits (ignored by "energy").
        train_labels: (n,) ints, the training images' classes ("mahalanobis" uses them).
        train_logits, val_logits: (n, classes) arrays: the logits, which "energy" scores (the others ignore them).
        pass_share: float in (0.5, 1). The share of validation images that pass. Defaults to PASS_SHARE.

    Returns:
        NoveltyModel.

    Raises:
        ValueError: for an unknown method, arrays that are not finite, too few training images.
    """
    if not 0.5 < pass_share < 1:
        raise ValueError(f"pass_share must be in (0.5, 1), got {pass_share}.")
    if method == "energy":
        if val_logits is None:
            raise ValueError("the energy score is fitted on the validation split's logits; pass val_logits.")
        arrays = {}
        val = _energy(_check(method, val_logits, "val_logits"))
    else:
        train = _check(method, train_features, "train_features")
        labels = np.asarray(train_labels)
        if len(train) != len(labels) or len(train) < 2:
            raise ValueError(f"{len(train)} training features for {len(labels)} labels; need two or more of each.")
        arrays = _fit_mahalanobis(train, labels) if method == "mahalanobis" else {"train": _normalised(train)}
        model = NoveltyModel(method, np.inf, pass_share, arrays)
        val = score(model, _check(method, val_features, "val_features"))
    threshold = float(np.quantile(val, pass_share, method="higher"))  # at least pass_share of them at or below it
    return NoveltyModel(method, threshold, float(pass_share), arrays)


def _fit_mahalanobis(features, labels):
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(features)
    covariance = (1 - SHRINK) * covariance + SHRINK * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return {"means": means, "precision": np.linalg.pinv(covariance, hermitian=True)}


def _energy(logits):
    return -special.logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def score(model, features=None, logits=None):
    """The novelty scores `(n,)` of inputs, higher for more novel: their features for "mahalanobis" and "knn",
    their logits for "energy"."""
    if model.method == "energy":
        if logits is None:
            raise ValueError("the energy score needs the logits.")
        return _energy(_check(model.method, logits, "logits"))
    features = _check(model.method, features)
    if model.method == "mahalanobis":
        d = features[:, None, :] - model.arrays["means"][None]  # (n, classes, dim)
        distances = np.einsum("ncd,de,nce->nc", d, model.arrays["precision"], d)
        return np.sqrt(np.maximum(distances.min(axis=1), 0.0))
    train = model.arrays["train"]
    k = min(K, len(train))
    out = np.empty(len(features))
    for start in range(0, len(features), 1024):  # a block at a time: (block, training images) of distances
        block = _normalised(features[start:start + 1024])
        distances = np.sqrt(np.maximum(2.0 - 2.0 * block @ train.T, 0.0))  # unit vectors: |a - b|^2 = 2 - 2 a.b
        out[start:start + len(block)] = np.partition(distances, k - 1, axis=1)[:, k - 1]
    return out


def save(model, path):
    """Writes the model as a plain .npz (no pickle) with its SHA-256 beside it, as runs.py writes the weights."""
    path = pathlib.Path(path)
    arrays = {f"array_{name}": value for name, value in model.arrays.items()}
    with fileio.atomic(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(FORMAT), method=np.array(model.method),
                     threshold=np.array(model.threshold), pass_share=np.array(model.pass_share), **arrays)
    runs.write_checksum(path)
    return path


def load(path):
    """Reads a model `save` wrote, after checking its SHA-256.

    Raises:
        runs.RunError: naming the file when it is damaged or not a novelty model.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; fit the run's novelty model first.")
    runs.verify_checksum(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != FORMAT:
                raise ValueError(f"format {int(data['format'])}, not {FORMAT}")
            arrays = {name[len("array_"):]: data[name] for name in data.files if name.startswith("array_")}
            model = NoveltyModel(str(data["method"]), float(data["threshold"]), float(data["pass_share"]), arrays)
        _check(model.method)
        needed = {"mahalanobis": {"means", "precision"}, "knn": {"train"}, "energy": set()}[model.method]
        if not needed <= arrays.keys() or not (np.isfinite(model.threshold) and 0.5 < model.pass_share < 1):
            raise ValueError("its arrays or threshold are not those of a fitted model")
    except (OSError, ValueError, KeyError) as e:
        raise runs.RunError(f"{path} is not a novelty model this project wrote ({e}); fit it again.") from None
    return model
