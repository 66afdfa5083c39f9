"""Tests of the Perceiver layers and model (modules.py); they run under every Keras backend (CI: TensorFlow and JAX)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from perceiver.modules import (
    PRESETS,
    ConvStem,
    CrossAttention,
    FourierPositionEncoding,
    MLP,
    LatentTransformer,
    Perceiver,
    PerceiverClassifier,
    PerceiverConfig,
    Preprocess,
    SelfAttentionBlock,
    build_model,
    fourier_features,
    forward_flops,
)

TINY = PerceiverConfig.preset("tiny")


def _loss(y, logits):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)


def gradients(model, x, y):
    """Gradients of the loss with respect to `model.trainable_variables`, as numpy arrays, on any backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = _loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        other = [v.value for v in model.non_trainable_variables]

        def loss_fn(values):
            logits, _ = model.stateless_call(values, other, x, training=True)
            return _loss(y, logits)

        grads = jax.grad(loss_fn)(trainable)
    elif backend == "torch":
        model.zero_grad()
        loss = _loss(y, model(x, training=True))
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
    else:
        pytest.skip(f"no gradient helper for backend {backend}")
    return [None if g is None else ops.convert_to_numpy(ops.cast(g, "float32")) for g in grads]


def run_layer_test(layer_cls, init_kwargs, input_shapes, expected_output_shape, expected_num_weights):
    """Config round trip, symbolic and eager call, shapes, weight count and a one-batch fit for one layer."""
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config
    for key, value in init_kwargs.items():
        assert config[key] == value, key

    symbolic = [keras.Input(shape=s[1:], batch_size=s[0]) for s in input_shapes]
    out = layer(*symbolic)
    assert tuple(out.shape) == expected_output_shape
    assert len(layer.weights) == expected_num_weights

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype("float32") for s in input_shapes]
    eager = layer_cls.from_config(config)
    result = eager(*arrays)
    assert tuple(result.shape) == expected_output_shape
    assert np.isfinite(ops.convert_to_numpy(result)).all()

    model = keras.Model(symbolic, out)
    model.compile(optimizer="adam", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    model.fit(arrays, rng.normal(size=expected_output_shape).astype("float32"), batch_size=input_shapes[0][0], verbose=0)
    changed = [not np.allclose(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed), "a weight did not move in one step of fit"


# === Fourier features ===


def test_fourier_features_closed_form_3x3_two_bands():
    feats = fourier_features((3, 3), num_bands=2)
    assert feats.shape == (9, 2 * (2 * 2 + 1))
    pi = math.pi
    # Bands linspace(1, mu/2 = 1.5, 2) = [1, 1.5]; positions linspace(-1, 1, 3) = [-1, 0, 1].
    # Row 2 is grid cell (0, 2): x = (-1, 1). Order: x0, x1, sin(x0 f1), sin(x0 f2), sin(x1 f1), sin(x1 f2), cos...
    x0, x1 = -1.0, 1.0
    expected = [
        x0, x1,
        math.sin(pi * x0 * 1.0), math.sin(pi * x0 * 1.5), math.sin(pi * x1 * 1.0), math.sin(pi * x1 * 1.5),
        math.cos(pi * x0 * 1.0), math.cos(pi * x0 * 1.5), math.cos(pi * x1 * 1.0), math.cos(pi * x1 * 1.5),
    ]
    np.testing.assert_allclose(feats[2], expected, atol=1e-6)
    # Row 3 is cell (1, 0): x = (0, -1); sin(-1.5 pi) = 1, cos(-1.5 pi) = 0.
    np.testing.assert_allclose(feats[3], [0, -1, 0, 0, 0, 1, 1, 1, -1, 0], atol=1e-6)


def test_fourier_options_and_max_resolution():
    sine = fourier_features((5,), num_bands=3, sine_only=True)
    assert sine.shape == (5, 1 * (3 + 1))
    nopos = fourier_features((5,), num_bands=3, concat_pos=False)
    assert nopos.shape == (5, 6)
    # mu = 224 puts the top band at 112 cycles: sin(pi * 112 * x) at x = 1/2 ... on a grid of 5 points x = 0.5.
    hi = fourier_features((5,), num_bands=2, max_resolution=(224,), concat_pos=False)
    np.testing.assert_allclose(hi[3], [math.sin(pi_x := math.pi * 0.5), math.sin(112 * pi_x), math.cos(pi_x),
                                       math.cos(112 * pi_x)], atol=1e-5)


@pytest.mark.parametrize("index_dims", [(7,), (4, 5), (3, 4, 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_encoding_channel_count_and_content(index_dims, channels):
    bands = 3
    layer = FourierPositionEncoding(num_bands=bands)
    x = np.random.default_rng(0).normal(size=(2,) + index_dims + (channels,)).astype("float32")
    out = ops.convert_to_numpy(layer(x))
    d = len(index_dims)
    assert out.shape == (2, math.prod(index_dims), d * (2 * bands + 1) + channels)
    np.testing.assert_allclose(out[:, :, :channels], x.reshape(2, -1, channels), atol=1e-6)
    np.testing.assert_allclose(out[1, :, channels:], fourier_features(index_dims, bands), atol=1e-6)


def test_encoding_features_computed_once_at_build():
    layer = FourierPositionEncoding(num_bands=2)
    layer(np.zeros((1, 3, 3, 1), "float32"))
    first = layer._features
    layer(np.ones((4, 3, 3, 1), "float32"))
    assert layer._features is first


# === Layers ===


def test_layer_fourier_encoding():
    run_layer_test(FourierPositionEncoding, dict(num_bands=2, max_resolution=(8, 8)), [(2, 4, 4, 3)], (2, 16, 13), 0)


def test_layer_cross_attention():
    # 2 LayerNorms (2 weights each) + query, key_value, output, mlp fc1, fc2 (2 each) + mlp norm (2) = 16 weights.
    run_layer_test(CrossAttention, dict(num_heads=2, widening_factor=2), [(2, 4, 16), (2, 10, 6)], (2, 4, 16), 16)


def test_layer_self_attention_block_and_transformer():
    run_layer_test(SelfAttentionBlock, dict(num_heads=4, widening_factor=1), [(2, 4, 16)], (2, 4, 16), 12)
    run_layer_test(LatentTransformer, dict(num_blocks=3, num_heads=2, widening_factor=1), [(2, 4, 16)], (2, 4, 16), 36)


def test_layer_mlp_is_a_residual_pre_norm_mlp():
    run_layer_test(MLP, dict(widening_factor=4), [(2, 5, 8)], (2, 5, 8), 6)  # norm (2) + fc1 (2) + fc2 (2)
    layer = MLP(widening_factor=2)
    x = np.random.default_rng(2).normal(size=(2, 3, 8)).astype("float32")
    out = ops.convert_to_numpy(layer(x))
    w = {v.path.split("/", 1)[1]: ops.convert_to_numpy(v) for v in layer.weights}
    assert w["fc1/kernel"].shape == (8, 16) and w["fc2/kernel"].shape == (16, 8)
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w["norm/gamma"] + w["norm/beta"]
    h = normed @ w["fc1/kernel"] + w["fc1/bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    np.testing.assert_allclose(out, x + h @ w["fc2/kernel"] + w["fc2/bias"], atol=2e-5)


def test_cross_attention_default_width_is_smaller_of_the_two():
    layer = CrossAttention()
    layer(np.zeros((1, 4, 32), "float32"), np.zeros((1, 9, 11), "float32"))
    assert layer.query.kernel.shape == (32, 11)
    assert layer.key_value.kernel.shape == (11, 22)
    assert layer.output_proj.kernel.shape == (11, 32)


def test_cross_attention_matches_reference_math():
    """The layer equals a numpy transcription of the paper's block (1 head, 1/sqrt(d) scaling, two residuals)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 3, 8)).astype("float32")
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    layer = CrossAttention()
    out = ops.convert_to_numpy(layer(z, x))
    w = {v.path.split("/", 1)[1]: ops.convert_to_numpy(v) for v in layer.weights}

    def ln(a, name):
        mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
        return (a - mu) / np.sqrt(var + 1e-5) * w[f"{name}/gamma"] + w[f"{name}/beta"]

    def gelu(a):
        return 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))

    q = ln(z, "latent_norm") @ w["query/kernel"] + w["query/bias"]
    kv = ln(x, "input_norm") @ w["key_value/kernel"] + w["key_value/bias"]
    k, v = kv[..., :6], kv[..., 6:]
    s = q @ k.transpose(0, 2, 1) / math.sqrt(6)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    h = z + (a @ v) @ w["output/kernel"] + w["output/bias"]
    m = gelu(ln(h, "mlp/norm") @ w["mlp/fc1/kernel"] + w["mlp/fc1/bias"]) @ w["mlp/fc2/kernel"] + w["mlp/fc2/bias"]
    np.testing.assert_allclose(out, h + m, atol=2e-4)


# === The model ===


def _toy_batch(n=8, seed=0, shape=TINY.input_shape):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def test_every_trainable_weight_gets_a_gradient():
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    x, y = _toy_batch(), np.arange(8) % 2
    grads = gradients(model, x, y)
    assert len(grads) == len(model.trainable_variables) > 0
    for var, grad in zip(model.trainable_variables, grads):
        assert grad is not None, var.path
        assert np.isfinite(grad).all(), var.path
        assert np.abs(grad).max() > 0, f"{var.path} receives no gradient"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_has_float32_logits_and_no_nan(policy):
    keras.utils.set_random_seed(0)
    model = build_model(TINY, dtype=policy)
    assert model.cross_attends[0].query.compute_dtype == policy.split("_")[1]
    x = _toy_batch() * 50.0  # large inputs stress the softmax
    logits, maps = model(x, return_attention=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(ops.convert_to_numpy(logits)).all()
    for m in maps:
        assert keras.backend.standardize_dtype(m.dtype) == "float32"
        np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(m, axis=-1)), 1.0, atol=1e-4)
    if policy == "mixed_bfloat16":
        grads = gradients(model, x, np.arange(8) % 2)
        assert all(g is not None and np.isfinite(g).all() for g in grads)


def _cross_attention_layers(model):
    return {id(layer): layer for layer in model._flatten_layers() if isinstance(layer, CrossAttention)}


@pytest.mark.parametrize("share", [True, False])
def test_weight_sharing_is_real(share):
    config = TINY.replace(num_cross_attends=8, share_cross_attend_weights=share, share_latent_transformer=share)
    model = build_model(config)
    crosses = _cross_attention_layers(model)
    transformers = {id(t) for t in model.transformers}
    assert len(model.cross_attend_layers) == len(crosses) and len(model.transformer_layers) == len(transformers)
    assert len(crosses) == (2 if share else 8)
    assert len(transformers) == (1 if share else 8)
    # The variables tell the same story: count kernels of the query projections and of the first block.
    paths = [v.path for v in model.trainable_variables]
    assert len(paths) == len(set(paths))
    assert sum(p.endswith("query/kernel") for p in paths) == (2 if share else 8)
    assert sum(p.endswith("block_0/qkv/kernel") for p in paths) == (1 if share else 8)
    one_cross = sum(math.prod(w.shape) for w in next(iter(crosses.values())).weights)
    one_transformer = sum(math.prod(w.shape) for w in model.transformers[0].weights)
    head = TINY.num_latents * TINY.latent_dim + 2 * TINY.latent_dim + TINY.latent_dim * 2 + 2
    expected = (2 if share else 8) * one_cross + (1 if share else 8) * one_transformer + head
    assert model.count_params() == expected


def test_first_cross_attend_is_not_shared():
    model = build_model(TINY.replace(num_cross_attends=3))
    assert model.cross_attends[0] is not model.cross_attends[1]
    assert model.cross_attends[1] is model.cross_attends[2]
    assert model.transformers[0] is model.transformers[2]


def test_attention_sums_to_one_and_model_sees_every_pixel():
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    x = _toy_batch(n=2)
    logits, maps = model(x, return_attention=True)
    positions = math.prod(TINY.input_shape[:-1])
    assert len(maps) == TINY.num_cross_attends
    for m in maps:
        m = ops.convert_to_numpy(m)
        assert m.shape == (2, TINY.num_cross_attend_heads, TINY.num_latents, positions)
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(logits), atol=1e-5)
    for pixel in [(0, 0), (7, 11), (15, 15)]:
        changed = x.copy()
        changed[0, pixel[0], pixel[1], 1] += 1.0
        diff = ops.convert_to_numpy(model(changed) - logits)
        assert np.abs(diff[0]).max() > 1e-6, f"pixel {pixel} does not reach the output"
        np.testing.assert_allclose(diff[1], 0.0, atol=1e-6)  # the other example is untouched


def test_attention_heatmaps_shape_and_mass():
    model = build_model(TINY)
    maps = model.attention_heatmaps(_toy_batch(n=3), batch_size=2)
    assert maps.shape == (3, TINY.num_cross_attends) + tuple(TINY.input_shape[:-1])
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)


@pytest.mark.parametrize("input_shape", [(20, 2), (6, 5, 4, 1)])
def test_model_on_1d_and_3d_inputs(input_shape):
    model = build_model(TINY.replace(input_shape=input_shape, num_classes=3))
    out = model(_toy_batch(n=2, shape=input_shape))
    assert tuple(out.shape) == (2, 3)


def test_serialisation_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(TINY.replace(num_cross_attends=3))
    x = _toy_batch(n=4)
    expected = ops.convert_to_numpy(model(x))

    clone = Perceiver.from_config(model.get_config())
    clone.build((None,) + TINY.input_shape)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(clone(x)), expected, atol=1e-6)

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)  # no custom_objects needed
    assert isinstance(loaded, Perceiver)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)

    model.save_weights(tmp_path / "m.weights.h5")
    fresh = build_model(TINY.replace(num_cross_attends=3))
    assert not np.allclose(ops.convert_to_numpy(fresh(x)), expected)
    fresh.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(ops.convert_to_numpy(fresh(x)), expected, atol=1e-6)


def test_the_attention_kernel_is_configuration_and_the_layers_never_ask_the_backend(monkeypatch, tmp_path):
    """shared/STYLE.md: code under modules.py never branches on the backend. Both kernels give the same answer, the
    choice survives saving, and a forward pass with keras.backend.backend() made to fail still runs."""
    keras.utils.set_random_seed(0)
    x = _toy_batch(n=4)
    matmul = build_model(TINY.replace(num_cross_attends=2, attention_kernel="matmul"))
    fused = build_model(TINY.replace(num_cross_attends=2, attention_kernel="fused"))
    fused.set_weights(matmul.get_weights())

    def no_backend():
        raise AssertionError("a layer asked keras.backend.backend()")

    monkeypatch.setattr(keras.backend, "backend", no_backend)
    expected = ops.convert_to_numpy(matmul(x))
    np.testing.assert_allclose(ops.convert_to_numpy(fused(x)), expected, atol=1e-5)
    assert {layer.attention_kernel for layer in fused._flatten_layers() if hasattr(layer, "attention_kernel")} == {
        "fused"}
    monkeypatch.undo()
    fused.save(tmp_path / "fused.keras")
    again = keras.saving.load_model(tmp_path / "fused.keras", safe_mode=True)
    assert again.config.attention_kernel == "fused"
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), expected, atol=1e-5)
    _, maps = fused(x, return_attention=True)  # scores come from the matmul kernel, whatever the configuration
    assert len(maps) == 2 and np.allclose(ops.convert_to_numpy(ops.sum(maps[0], axis=-1)), 1.0, atol=1e-5)


def test_classifier_pre_processing_and_calibration_on_every_backend(tmp_path):
    """PerceiverClassifier under this backend: raw 8-bit images of any size, grey or RGB, give calibrated
    probabilities equal to the Perceiver on the training scaling, and survive a safe-mode round trip."""
    keras.utils.set_random_seed(0)
    perceiver = build_model(TINY)
    model = PerceiverClassifier.wrap(perceiver, ["a", "b"], temperature=3.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 16, 16, 3)).astype("uint8")  # the trained size: nothing to resize
    logits = ops.convert_to_numpy(perceiver(x.astype("float32") / 127.5 - 1.0)).astype("float64") / 3.0
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), want / want.sum(1, keepdims=True), atol=1e-6)
    flat = np.full((2, 37, 23, 1), 77, "uint8")  # a constant grey image stays that constant at any size
    np.testing.assert_allclose(ops.convert_to_numpy(Preprocess((16, 16), 3)(flat)), 77 / 127.5 - 1.0, atol=1e-6)
    tall = rng.integers(0, 256, (1, 90, 20, 1)).astype("uint8")  # the height shrinks more: the other pass order
    assert ops.convert_to_numpy(Preprocess((16, 16), 1)(tall)).shape == (1, 16, 16, 1)
    model.save(tmp_path / "c.keras")
    again = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    assert isinstance(again, PerceiverClassifier) and again.class_names == ["a", "b"] and again.temperature == 3.0
    np.testing.assert_allclose(ops.convert_to_numpy(again(flat)), ops.convert_to_numpy(model(flat)), atol=1e-6)


def test_mismatched_weights_are_refused(tmp_path):
    build_model(TINY).save_weights(tmp_path / "m.weights.h5")
    other = build_model(TINY.replace(latent_dim=64))
    with pytest.raises(ValueError):
        other.load_weights(tmp_path / "m.weights.h5")


def _mirror_task(n, size=16, seed=0):
    """Left/right toy task: a half-disc whose flat side faces left (class 0) or right (class 1), jittered in place."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.1, size=(n, size, size, 3)).astype("float32")
    y = np.arange(n) % 2
    rows, cols = np.mgrid[:size, :size]
    for i in range(n):
        r0, c0 = size / 2 + rng.uniform(-2, 2, size=2)
        facing = (cols - c0) if y[i] else (c0 - cols)
        x[i][((rows - r0) ** 2 + (cols - c0) ** 2 <= 25) & (facing >= 0)] += 1.0
    return x, y


def test_tiny_model_learns_mirrored_shapes():
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-3, 60 * 4)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _mirror_task(64)
    assert model.evaluate(x, y, verbose=0)[1] < 0.9  # it has something to learn
    stop_at_one = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", logs["accuracy"] == 1.0)
    )
    history = model.fit(x, y, batch_size=16, epochs=60, verbose=0, callbacks=[stop_at_one])
    assert history.history["accuracy"][-1] == 1.0, history.history["accuracy"]
    assert model.evaluate(x, y, verbose=0)[1] == 1.0


def test_a_tiny_volume_perceiver_learns_which_end_of_the_scan_a_structure_is_at():
    """The scanner-convention task in miniature: every slice looks alike in the plane, and the class is where along
    the slices a structure lies (a fibular head lateral: at the first slices of a right knee, the last of a left).
    Only positions over the slices tell, and the volume model learns it; a slice model could not."""
    rng = np.random.default_rng(0)
    n, slices = 48, 6
    y = np.arange(n) % 2
    x = rng.normal(0, 0.3, (n, slices, 16, 16, 1)).astype("float32")
    for i in range(n):
        k = int(rng.integers(0, 2)) if y[i] == 0 else int(rng.integers(slices - 2, slices))
        r, c = rng.integers(2, 10, size=2)
        x[i, k, r:r + 5, c:c + 5, 0] += 2.0  # the structure, anywhere in the plane
    keras.utils.set_random_seed(0)
    model = build_model(TINY.replace(input_shape=(slices, 16, 16, 1), preprocessor="conv", conv_channels=8))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    stop_at_one = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", logs["accuracy"] == 1.0))
    history = model.fit(x, y, batch_size=16, epochs=80, verbose=0, callbacks=[stop_at_one])
    assert history.history["accuracy"][-1] == 1.0, history.history["accuracy"][-5:]


def test_xla_compiled_training_step():
    model = build_model(TINY)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    x, y = _mirror_task(16)
    logs = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"]).all()


# === Config ===


def test_presets_are_valid_and_paper_preset_is_the_paper():
    paper = PerceiverConfig.preset("paper")
    assert (paper.num_latents, paper.latent_dim, paper.num_cross_attends) == (512, 1024, 8)
    assert (paper.num_self_attends_per_block, paper.num_self_attend_heads, paper.num_bands) == (6, 8, 64)
    assert paper.input_channels == 261  # 3 + 2 * (2 * 64 + 1), as in the paper
    assert paper.max_resolution == (224, 224)
    for name in PRESETS:
        assert forward_flops(PerceiverConfig.preset(name)) > 0


def test_forward_flops_counts_the_matmuls():
    c = PerceiverConfig.preset("tiny")
    # tiny: 256 positions x 21 channels, 8 x 32 latents, qk 21, 2 cross-attends (1 shared), 1 block of 2 heads.
    kv = 2 * 256 * 21 * 2 * 21
    cross = 8 * 32 * 21 + 8 * 256 * 21 * 2 + 8 * 21 * 32 + 2 * 8 * 32 * 32
    block = 8 * 32 * 96 + 2 * 8 * 8 * 32 + 8 * 32 * 32 + 2 * 8 * 32 * 32
    assert forward_flops(c) == 2 * (kv + 2 * (cross + block) + 32 * 2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(latent_dim=100, num_self_attend_heads=8), "latent_dim 100 is not divisible by num_self_attend_heads 8"),
        (dict(num_bands=0), "num_bands must be at least 1"),
        (dict(input_shape=(64, 64)), None),
        (dict(input_shape=(2, 2, 2, 2, 3)), "input_shape"),
        (dict(num_cross_attend_heads=4), "not divisible by num_cross_attend_heads 4"),
        (dict(num_latents="64"), "must be an integer"),
        (dict(concat_pos=1), "must be true or false"),
        (dict(max_resolution=(64,)), "one value per index dimension"),
        (dict(preprocessor="patches"), "preprocessor must be one of pixels, conv"),
        (dict(preprocessor="conv", input_shape=(64, 3)), "conv pre-processor needs 2-D images"),
        (dict(preprocessor="conv", conv_channels=0), "conv_channels must be at least 1"),
        (dict(attention_kernel="flash"), "attention_kernel must be one of matmul, fused"),
    ],
)
def test_bad_config_fails_clearly(changes, message):
    if "input_shape" in changes and changes["input_shape"] == (64, 64):
        # (64, 64) reads as a 1-D signal of 64 positions with 64 channels: valid; (64,) alone is not.
        PerceiverConfig.preset("tiny", **changes)
        changes, message = dict(input_shape=(64,)), "input_shape"
    with pytest.raises(ValueError, match=message):
        PerceiverConfig.preset("tiny", **changes)


def test_unknown_config_key_and_preset():
    with pytest.raises(ValueError, match="Unknown model config key.*num_latent\\b"):
        PerceiverConfig.from_dict({**TINY.to_dict(), "num_latent": 3})
    with pytest.raises(ValueError, match="Unknown preset"):
        PerceiverConfig.preset("huge")


def test_model_refuses_wrong_input_shape():
    model = build_model(TINY)
    with pytest.raises(ValueError, match="configured for inputs of shape"):
        model(np.zeros((1, 8, 8, 3), "float32"))


def test_layers_fail_early_on_bad_widths():
    with pytest.raises(ValueError, match="latent_dim 30 is not divisible by num_heads 8"):
        SelfAttentionBlock(num_heads=8)(np.zeros((1, 4, 30), "float32"))
    with pytest.raises(ValueError, match="num_bands must be a positive integer"):
        FourierPositionEncoding(num_bands=0)
    with pytest.raises(ValueError, match="needs inputs of shape"):
        FourierPositionEncoding(num_bands=2)(np.zeros((4, 3), "float32"))


def test_shared_weights_are_saved_once(tmp_path):
    import h5py

    shared = build_model(TINY.replace(num_cross_attends=8))
    separate = build_model(TINY.replace(num_cross_attends=8, share_cross_attend_weights=False,
                                        share_latent_transformer=False))
    counts = {}
    for name, model in (("shared", shared), ("separate", separate)):
        model.save_weights(tmp_path / f"{name}.weights.h5")
        with h5py.File(tmp_path / f"{name}.weights.h5") as f:
            sizes = []
            f.visititems(lambda _, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None)
        counts[name] = sum(sizes)
    assert counts["shared"] == shared.count_params()
    assert counts["separate"] == separate.count_params() > 3 * counts["shared"]


CONV = TINY.replace(preprocessor="conv", conv_channels=8)


def test_conv_stem_gives_a_quarter_grid_of_tokens():
    """Perceiver IO's conv+maxpool: a 16 x 16 image becomes 4 x 4 tokens (odd sizes round up), each seeing a patch."""
    assert CONV.token_grid == (4, 4) and CONV.input_channels == 8 + 2 * (2 * 4 + 1)
    assert CONV.replace(input_shape=(17, 9, 1)).token_grid == (5, 3)
    assert TINY.token_grid == (16, 16)
    stem = ConvStem(8)
    out = stem(_toy_batch(n=2, shape=(17, 9, 3)))
    assert tuple(out.shape) == (2, 5, 3, 8) and float(ops.min(out)) >= 0.0  # ReLU before the max-pool
    model = build_model(CONV)
    x = _toy_batch(n=3)
    assert tuple(model(x).shape) == (3, 2)
    maps = model.attention_heatmaps(x, batch_size=2)
    assert maps.shape == (3, CONV.num_cross_attends, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # a token sees its neighbourhood, not only its pixel: moving one pixel changes the neighbouring tokens' input
    y = np.array(x)
    y[:, 5, 5, :] += 3.0
    stem_out = model.stem(x, training=False), model.stem(y, training=False)
    changed = np.abs(ops.convert_to_numpy(stem_out[0] - stem_out[1])).sum(axis=(0, 3)) > 0
    assert changed.sum() >= 2


def test_conv_stem_flops_and_training_mode():
    # the stem's cost on top of the same Perceiver on 4 x 4 tokens of 8 channels: 8 x 8 outputs of the 7x7 convolution, 3 input channels, 8 output channels
    assert forward_flops(CONV) - forward_flops(CONV.replace(preprocessor="pixels", input_shape=(4, 4, 8))) == (
        2 * 8 * 8 * 49 * 3 * 8
    )
    model = build_model(CONV)
    x = _toy_batch(n=4)
    before = [ops.convert_to_numpy(w) for w in model.stem.norm.non_trainable_weights]
    model(x, training=False)
    assert all(np.array_equal(b, ops.convert_to_numpy(w)) for b, w in zip(before, model.stem.norm.non_trainable_weights))
    model(x, training=True)  # batch statistics: the moving averages move
    assert not all(np.array_equal(b, ops.convert_to_numpy(w))
                   for b, w in zip(before, model.stem.norm.non_trainable_weights))


def test_a_volume_perceiver_sees_every_slice_through_the_conv_stem(tmp_path):
    """Issue 28's volume Perceiver: (slices, H, W, C) through the 2-D conv stem slice by slice, 3-D Fourier
    positions over slice, row and column; each slice's tokens are that slice's stem output, the attention covers
    every token, and the model saves and loads."""
    config = TINY.replace(input_shape=(5, 16, 20, 1), preprocessor="conv", conv_channels=8, num_cross_attends=2)
    assert config.token_grid == (5, 4, 5)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    x = np.random.default_rng(0).normal(size=(2, 5, 16, 20, 1)).astype("float32")
    logits, maps = model(x, return_attention=True)
    assert tuple(logits.shape) == (2, 2) and tuple(maps[0].shape)[-1] == 5 * 4 * 5
    # the stem works slice by slice: a volume's stem output is its slices' outputs, stacked
    stem = ops.convert_to_numpy(model.stem(x, training=False))
    per_slice = np.stack([ops.convert_to_numpy(model.stem(x[:, k], training=False)) for k in range(5)], axis=1)
    np.testing.assert_allclose(stem, per_slice, atol=1e-6)
    heat = model.attention_heatmaps(x)
    assert heat.shape == (2, 2, 5, 4, 5) and np.allclose(heat.sum(axis=(2, 3, 4)), 1.0, atol=1e-4)
    # the slice order matters to the model (positions over slices): reversing the slices changes the logits
    assert not np.allclose(ops.convert_to_numpy(model(x[:, ::-1])), ops.convert_to_numpy(logits), atol=1e-6)
    model.save(tmp_path / "volume.keras")
    again = keras.saving.load_model(tmp_path / "volume.keras", safe_mode=True)
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), ops.convert_to_numpy(logits), atol=1e-5)
    assert forward_flops(config) > forward_flops(config.replace(input_shape=(1, 16, 20, 1)))


def test_conv_model_serialisation_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(CONV)
    model(_toy_batch(n=4), training=True)  # moving statistics away from their initial values
    x = _toy_batch(n=4)
    expected = ops.convert_to_numpy(model(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    model.save_weights(tmp_path / "m.weights.h5")
    fresh = build_model(CONV)
    fresh.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(ops.convert_to_numpy(fresh(x)), expected, atol=1e-6)
