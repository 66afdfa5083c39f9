"""Novelty scores (issue 29, step 1): the threshold passes the stated share of validation images, inputs unlike the
training ones score above it, the model survives save and load, and the features are the ones the head reads."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from keras import ops

from perceiver import novelty, runs
from perceiver.errors import UserError
from perceiver.modules import PerceiverConfig, build_model


def _blobs(rng, n, dim, shift=0.0):
    """Two Gaussian classes in `dim` dimensions, their means 3 apart and 6 from the origin along the first axis (as a
    network's features lie away from zero), moved by `shift` along that axis."""
    labels = np.arange(n) % 2
    centres = np.stack([np.zeros(dim), np.full(dim, 3.0 / np.sqrt(dim))])
    centres[:, 0] += 6.0 + shift
    return rng.normal(size=(n, dim)) + centres[labels], labels


def _logits(features):
    """Logits of a linear head that separates the two blobs (for the energy score)."""
    return np.stack([-features.sum(axis=1), features.sum(axis=1)], axis=1)


@given(seed=st.integers(0, 2**16), dim=st.integers(2, 12), n_val=st.integers(20, 400),
       share=st.sampled_from([0.9, 0.95, 0.99]), method=st.sampled_from(novelty.METHODS))
@settings(max_examples=60, deadline=None)
def test_the_threshold_passes_the_stated_share_of_validation_images(seed, dim, n_val, share, method):
    rng = np.random.default_rng(seed)
    train, labels = _blobs(rng, 200, dim)
    val, _ = _blobs(rng, n_val, dim)
    model = novelty.fit(method, train, labels, val, val_logits=_logits(val), pass_share=share)
    scores = novelty.score(model, val, _logits(val))
    assert (scores <= model.threshold).mean() >= share
    assert np.isfinite(scores).all() and model.pass_share == share


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_features_far_from_the_training_ones_are_novel_and_near_ones_mostly_pass(method):
    rng = np.random.default_rng(0)
    train, labels = _blobs(rng, 400, 8)
    val, _ = _blobs(rng, 300, 8)
    model = novelty.fit(method, train, labels, val)
    near, _ = _blobs(rng, 500, 8)
    far, _ = _blobs(rng, 500, 8, shift=-12.0)  # to the other side of the origin: far, and another direction
    assert (novelty.score(model, near) > model.threshold).mean() < 0.05
    assert (novelty.score(model, far) > model.threshold).all()


def test_the_energy_score_calls_outputs_unlike_the_training_ones_novel():
    """Confident logits (the training distribution's) have low energy; logits near zero, as for an input that
    excites nothing the model learned, have high energy and are novel."""
    rng = np.random.default_rng(1)
    val = rng.normal(0, 1, (300, 2)) + np.array([8.0, -8.0])
    model = novelty.fit("energy", None, None, None, val_logits=val)
    assert (novelty.score(model, logits=rng.normal(0, 0.1, (100, 2))) > model.threshold).all()
    with pytest.raises(ValueError, match="needs the logits"):
        novelty.score(model, np.zeros((3, 4)))


@pytest.mark.parametrize("method", novelty.METHODS)
def test_a_novelty_model_survives_save_and_load_and_damage_is_refused(method, tmp_path):
    rng = np.random.default_rng(2)
    train, labels = _blobs(rng, 100, 6)
    val, _ = _blobs(rng, 50, 6)
    model = novelty.fit(method, train, labels, val, val_logits=_logits(val))
    path = novelty.save(model, tmp_path / "novelty.npz")
    assert runs.verify_checksum(path, warn=False)
    again = novelty.load(path)
    probe, _ = _blobs(rng, 30, 6, shift=1.0)
    np.testing.assert_array_equal(novelty.score(again, probe, _logits(probe)), novelty.score(model, probe, _logits(probe)))
    assert (again.method, again.threshold, again.pass_share) == (model.method, model.threshold, model.pass_share)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the SHA-256"):
        novelty.load(path)


def test_bad_input_is_one_sentence():
    with pytest.raises(ValueError, match="method must be one of"):
        novelty.fit("isolation-forest", np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        novelty.fit("knn", np.full((4, 2), np.nan), [0, 1, 0, 1], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="pass_share"):
        novelty.fit("knn", np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((4, 2)), pass_share=1.0)


def test_the_features_are_what_the_head_reads():
    keras.utils.set_random_seed(0)
    model = build_model(PerceiverConfig.preset("tiny", input_shape=(16, 16, 3)))
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype("float32")
    features = model.features(x)
    assert tuple(features.shape) == (3, model.config.latent_dim)
    np.testing.assert_allclose(ops.convert_to_numpy(model.classifier(features)), ops.convert_to_numpy(model(x)),
                               atol=1e-6)
