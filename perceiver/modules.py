"""The Perceiver (Jaegle et al. 2021, arXiv 2103.03206) as Keras 3 layers.

Written with `keras.ops` only, so the same model runs under `KERAS_BACKEND=tensorflow` (default), `jax` and `torch`.

    python modules.py --preset akoa        # summary: parameters, GFLOPs per image, shapes
    python modules.py --preset paper       # the ImageNet setting of the paper

Expected output for `--preset akoa`: a Keras summary, then lines such as
`parameters: 0.27 M`, `forward GFLOPs per image: 0.10`, and the shape of every stage.

The model follows the paper unless an option says otherwise (the paper's choice is always the default):
- Fourier position features per axis: positions `linspace(-1, 1, n)`, `K` bands `linspace(1, mu / 2, K)`, features
  `[x, sin(pi f x), cos(pi f x)]`, concatenated to the input channels and computed once at build time.
- Cross-attention: separate LayerNorms on latents and inputs, 1 head, query/key/value width = the smaller of the latent
  and input widths, scores scaled by `1 / sqrt(head width)`, output projected back to the latent width, residual onto
  the un-normalised latents, then a pre-norm GELU MLP with residual.
- Latent Transformer: pre-norm self-attention (8 heads) + MLP blocks.
- Cross-attends interleaved with the latent Transformer; cross-attends 2..N share weights, the first does not; the latent
  Transformer is shared across repeats. Because the shared cross-attend sees the same inputs every time, its keys and
  values are computed once per forward pass and reused (same result, less work).
- Head: mean over latents, LayerNorm, one Dense to logits (kept in float32 under mixed precision). No dropout.
- Pre-processing (option `preprocessor`): "pixels", the paper's, gives the cross-attention one token per pixel;
  "conv" is the Perceiver IO paper's conv+maxpool (Jaegle et al. 2022, arXiv 2107.14795: a 7x7 stride-2 convolution
  to 64 channels, batch norm, ReLU, 3x3 stride-2 max-pool), one token per 4 x 4 patch, with the Fourier features of
  the token grid. The `akoa-conv` preset, train.py's default, uses it: on the synthetic benchmark it learned in 12
  epochs what the pixel model did not (see README, "Results").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

import keras
import numpy as np
from keras import layers, ops

_PACKAGE = "perceiver"


def _check_positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_kernel(kernel):
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {kernel!r}.")
    return kernel


def fourier_features(index_dims, num_bands, max_resolution=None, concat_pos=True, sine_only=False):
    """Fourier position features of a grid, as a float32 numpy array of shape `(prod(index_dims), channels)`.

    Channel order: the raw positions of the `d` axes (if `concat_pos`), then `sin(pi * f_k * x_i)` for axis `i` and band
    `k` (axis-major: all bands of axis 0, then of axis 1, ...), then the cosines in the same order (unless `sine_only`).
    Rows run over the grid in C order (the last axis fastest), matching `reshape(batch, -1, channels)` of the input.
    """
    index_dims = tuple(int(n) for n in index_dims)
    if not index_dims:
        raise ValueError("index_dims must name at least one axis.")
    for n in index_dims:
        _check_positive_int("every index dimension", n)
    _check_positive_int("num_bands", num_bands)
    if max_resolution is None:
        max_resolution = index_dims
    max_resolution = tuple(float(m) for m in max_resolution)
    if len(max_resolution) != len(index_dims):
        raise ValueError(
            f"max_resolution {max_resolution} needs one value per axis of the grid {index_dims}."
        )
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float64) for n in index_dims]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(index_dims))  # (M, d)
    freqs = np.stack([np.linspace(1.0, mu / 2.0, num_bands) for mu in max_resolution])  # (d, K)
    angles = np.pi * pos[:, :, None] * freqs[None, :, :]  # (M, d, K)
    angles = angles.reshape(pos.shape[0], -1)  # (M, d*K), axis-major
    parts = [pos] if concat_pos else []
    parts.append(np.sin(angles))
    if not sine_only:
        parts.append(np.cos(angles))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def fourier_channels(rank, num_bands, concat_pos=True, sine_only=False):
    """Number of position channels: `d * (2K + 1)` with the paper's options."""
    return rank * (num_bands * (1 if sine_only else 2) + (1 if concat_pos else 0))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FourierPositionEncoding(layers.Layer):
    """Flattens a grid of inputs and concatenates Fourier position features to each element.

    Works for index grids of any rank: `(batch, n, C)` signals, `(batch, H, W, C)` images, `(batch, D, H, W, C)`
    volumes. See `fourier_features` for the channel order. The features are computed once when the layer is built.

    Args:
        num_bands: int. Frequency bands per axis, `K`. Defaults to 64 in the paper.
        max_resolution: tuple of int or None. Per-axis `mu`; the highest band is `mu / 2` (Nyquist). Defaults to None,
            the grid size of each axis.
        concat_pos: bool. Include the raw positions as features. Defaults to True.
        sine_only: bool. Use only the sines (no cosines). Defaults to False.

    Call arguments:
        inputs: tensor of shape `(batch, *index_dims, channels)`.

    Returns:
        A tensor of shape `(batch, prod(index_dims), channels + d * (2K + 1))`.

    Example:
        >>> enc = FourierPositionEncoding(num_bands=6)
        >>> enc(np.zeros((2, 64, 64, 3))).shape
        (2, 4096, 29)
    """

    def __init__(self, num_bands, max_resolution=None, concat_pos=True, sine_only=False, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_bands", num_bands)
        # === Config ===
        self.num_bands = int(num_bands)
        self.max_resolution = None if max_resolution is None else tuple(int(m) for m in max_resolution)
        self.concat_pos = bool(concat_pos)
        self.sine_only = bool(sine_only)

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(
                f"FourierPositionEncoding needs inputs of shape (batch, *index_dims, channels), got {tuple(input_shape)}."
            )
        index_dims = tuple(input_shape[1:-1])
        if any(n is None for n in index_dims):
            raise ValueError(f"The grid size must be known when the model is built, got {tuple(input_shape)}.")
        self._index_dims = index_dims
        self._features = fourier_features(
            index_dims, self.num_bands, self.max_resolution, self.concat_pos, self.sine_only
        )

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        channels = inputs.shape[-1]
        flat = ops.reshape(inputs, (batch, -1, channels))  # (batch, positions, channels)
        pos = ops.cast(ops.convert_to_tensor(self._features), flat.dtype)  # (positions, pos_channels)
        pos = ops.broadcast_to(pos[None], (batch,) + tuple(pos.shape))  # (batch, positions, pos_channels)
        return ops.concatenate([flat, pos], axis=-1)

    def compute_output_shape(self, input_shape):
        positions = math.prod(input_shape[1:-1])
        rank = len(input_shape) - 2
        extra = fourier_channels(rank, self.num_bands, self.concat_pos, self.sine_only)
        return (input_shape[0], positions, input_shape[-1] + extra)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bands=self.num_bands,
            max_resolution=self.max_resolution,
            concat_pos=self.concat_pos,
            sine_only=self.sine_only,
        )
        return config


NORM_EPSILON = 1e-5  # every LayerNormalization's epsilon
ATTENTION_KERNELS = ("matmul", "fused")  # PerceiverConfig.attention_kernel, `_attend`


def default_attention_kernel(backend):
    """The attention kernel that trained fastest on CPU under `backend` (bench/RESULTS.md, "Profile and changes"):
    "fused" (`keras.ops.dot_product_attention`, its flash kernel) under PyTorch, "matmul" under TensorFlow and JAX.
    For whoever builds a config (train.py); the layers never ask the backend (shared/STYLE.md)."""
    return "fused" if backend == "torch" else "matmul"


def _attend(q, k, v, num_heads, return_scores, kernel="matmul"):
    """Multi-head scaled dot-product attention on `(batch, tokens, heads * head_dim)` tensors.

    `kernel` (configuration, `ATTENTION_KERNELS`): "matmul", plain batched matmuls with the softmax in float32 (the
    one-head cross-attention needs no head axis; the scale goes onto the queries), which made the whole training step
    faster than `dot_product_attention` under TensorFlow and JAX; "fused", `keras.ops.dot_product_attention`, which
    is faster under PyTorch. Attention scores, when asked for, always come from "matmul" (the fused kernel does not
    return them).
    """
    batch = ops.shape(q)[0]
    head_dim = q.shape[-1] // num_heads
    v_head = v.shape[-1] // num_heads
    scale = 1.0 / math.sqrt(head_dim)
    if not return_scores and kernel == "fused":
        q = ops.reshape(q, (batch, -1, num_heads, head_dim))  # (batch, queries, heads, head_dim)
        k = ops.reshape(k, (batch, -1, num_heads, head_dim))  # (batch, keys, heads, head_dim)
        v = ops.reshape(v, (batch, -1, num_heads, v_head))  # (batch, keys, heads, v_head)
        out = ops.dot_product_attention(q, k, v, scale=scale)  # (batch, queries, heads, v_head)
        return ops.reshape(out, (batch, -1, num_heads * v_head)), None
    q = q * ops.cast(scale, q.dtype)
    if num_heads == 1:  # the paper's cross-attention: no head axis to move
        logits = ops.matmul(q, ops.transpose(k, (0, 2, 1)))  # (batch, queries, keys)
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        out = ops.matmul(ops.cast(weights, v.dtype), v)  # (batch, queries, v_head)
        return out, (weights[:, None] if return_scores else None)
    q = ops.transpose(ops.reshape(q, (batch, -1, num_heads, head_dim)), (0, 2, 1, 3))  # (batch, heads, queries, d)
    k = ops.transpose(ops.reshape(k, (batch, -1, num_heads, head_dim)), (0, 2, 3, 1))  # (batch, heads, d, keys)
    v = ops.transpose(ops.reshape(v, (batch, -1, num_heads, v_head)), (0, 2, 1, 3))  # (batch, heads, keys, v_head)
    weights = ops.softmax(ops.cast(ops.matmul(q, k), "float32"), axis=-1)  # (batch, heads, queries, keys)
    out = ops.matmul(ops.cast(weights, v.dtype), v)  # (batch, heads, queries, v_head)
    out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, -1, num_heads * v_head))
    return out, (weights if return_scores else None)


def standardize(x, epsilon, dtype):
    """`(x - mean) / sqrt(var + epsilon)` over the last axis, computed in float32 and returned as `dtype`: a
    LayerNorm without its scale and offset."""
    x = ops.cast(x, "float32")
    mean, variance = ops.moments(x, axes=[-1], keepdims=True)
    return ops.cast((x - mean) * ops.rsqrt(variance + epsilon), dtype)


def default_qk_dim(latent_dim, input_dim, qk_dim=None):
    """Width of the cross-attention's queries and keys: `qk_dim` if set, else the smaller of the latent and input
    widths (the paper)."""
    return qk_dim or min(latent_dim, input_dim)


def check_heads(what, width, num_heads, heads_name="num_heads"):
    """Raises ValueError unless `num_heads` divides `width` (every head gets `width / num_heads` channels)."""
    if width % num_heads:
        raise ValueError(f"{what} {width} is not divisible by {heads_name} {num_heads}.")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLP(layers.Layer):
    """The pre-norm MLP of a Transformer block, with its residual: `x + fc2(gelu(fc1(norm(x))))`.

    Args:
        widening_factor: int. Hidden width over the input width. Defaults to 1 (the paper's Perceiver).

    Call arguments:
        x: tensor `(batch, tokens, width)`.

    Example:
        >>> MLP(widening_factor=4)(np.zeros((2, 8, 32))).shape
        (2, 8, 32)
    """

    def __init__(self, widening_factor=1, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("widening_factor", widening_factor)
        # === Config ===
        self.widening_factor = int(widening_factor)

    def build(self, input_shape):
        width, policy = input_shape[-1], self.dtype_policy
        self.norm = layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="norm")
        self.fc1 = layers.Dense(width * self.widening_factor, activation="gelu", dtype=policy, name="fc1")
        self.fc2 = layers.Dense(width, dtype=policy, name="fc2")
        self.norm.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (width * self.widening_factor,))

    def call(self, x):
        return x + self.fc2(self.fc1(self.norm(x)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(widening_factor=self.widening_factor)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossAttention(layers.Layer):
    """Cross-attention from a latent array to an input array, followed by a pre-norm MLP.

    Args:
        num_heads: int. Attention heads. Defaults to 1 (the paper).
        qk_dim: int or None. Width of queries and keys (all heads together). Defaults to None, the smaller of the latent
            and input widths (the paper).
        v_dim: int or None. Width of the values. Defaults to None, `qk_dim`.
        widening_factor: int. MLP hidden width over the latent width. Defaults to 1 (the paper).

    Call arguments:
        latents: tensor `(batch, num_latents, latent_dim)`.
        inputs: tensor `(batch, positions, input_dim)`.
        return_attention_scores: bool. Also return the attention weights `(batch, heads, num_latents, positions)`.

    Example:
        >>> layer = CrossAttention()
        >>> layer(np.zeros((2, 8, 32)), np.zeros((2, 100, 29))).shape
        (2, 8, 32)

    References:
        Jaegle et al., "Perceiver: General Perception with Iterative Attention", ICML 2021, section 2 and appendix.
    """

    def __init__(self, num_heads=1, qk_dim=None, v_dim=None, widening_factor=1, attention_kernel="matmul", **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("widening_factor", widening_factor)
        for name, value in (("qk_dim", qk_dim), ("v_dim", v_dim)):
            if value is not None:
                _check_positive_int(name, value)
        # === Config ===
        self.num_heads = int(num_heads)
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.widening_factor = int(widening_factor)
        self.attention_kernel = _check_kernel(attention_kernel)

    def build(self, latents_shape, inputs_shape):
        latent_dim, input_dim = latents_shape[-1], inputs_shape[-1]
        qk = default_qk_dim(latent_dim, input_dim, self.qk_dim)
        v = self.v_dim or qk
        check_heads("Cross-attention query/key width", qk, self.num_heads)
        check_heads("Cross-attention value width", v, self.num_heads)
        self._qk, self._v = qk, v
        policy = self.dtype_policy
        self.latent_norm = layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="latent_norm")
        self.input_norm = layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="input_norm")
        self.query = layers.Dense(qk, dtype=policy, name="query")
        self.key_value = layers.Dense(qk + v, dtype=policy, name="key_value")  # keys and values in one matmul
        self.output_proj = layers.Dense(latent_dim, dtype=policy, name="output")
        self.mlp = MLP(self.widening_factor, dtype=policy, name="mlp")
        self.latent_norm.build(latents_shape)
        self.input_norm.build(inputs_shape)
        self.query.build(latents_shape)
        self.key_value.build(inputs_shape)
        self.output_proj.build(tuple(latents_shape[:-1]) + (v,))
        self.mlp.build(latents_shape)

    def project_inputs(self, inputs, standardized=None):
        """Keys and values of the inputs, `((batch, positions, qk), (batch, positions, v))`; reusable across calls.

        Computed as `standardize(inputs) @ (gamma * W) + (beta @ W + b)`, which equals
        `key_value(input_norm(inputs))`: folding the LayerNorm's scale and offset into the projection leaves no
        gradient to flow into the standardized inputs (they depend on the data only), so training skips the
        LayerNorm's backward pass and the projection's input gradient over every position (bench/RESULTS.md).
        `standardized`: `standardize(inputs)` if the caller already has it (every cross-attend layer shares it).
        """
        if standardized is None:
            standardized = standardize(inputs, self.input_norm.epsilon, self.compute_dtype)
        gamma = ops.cast(self.input_norm.gamma, "float32")
        beta = ops.cast(self.input_norm.beta, "float32")
        kernel = ops.cast(self.key_value.kernel, "float32")
        folded = ops.cast(gamma[:, None] * kernel, self.compute_dtype)  # (input_dim, qk + v)
        offset = ops.cast(ops.matmul(beta[None], kernel)[0] + ops.cast(self.key_value.bias, "float32"),
                          self.compute_dtype)
        kv = ops.matmul(standardized, folded) + offset  # (batch, positions, qk + v)
        keys, values = ops.split(kv, [self._qk], axis=-1)  # split's gradient is one concat; a slice's is a zero-fill
        return keys, values

    def attend(self, latents, keys, values, return_attention_scores=False):
        """The block on precomputed keys and values (see `project_inputs`)."""
        q = self.query(self.latent_norm(latents))  # (batch, latents, qk)
        attended, weights = _attend(q, keys, values, self.num_heads, return_attention_scores, self.attention_kernel)
        x = latents + self.output_proj(attended)  # residual onto the un-normalised latents
        x = self.mlp(x)
        return (x, weights) if return_attention_scores else x

    def call(self, latents, inputs, return_attention_scores=False):
        keys, values = self.project_inputs(inputs)
        return self.attend(latents, keys, values, return_attention_scores)

    def compute_output_shape(self, latents_shape, inputs_shape):
        return latents_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, qk_dim=self.qk_dim, v_dim=self.v_dim, widening_factor=self.widening_factor,
            attention_kernel=self.attention_kernel,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAttentionBlock(layers.Layer):
    """One pre-norm Transformer block on the latents: self-attention + residual, then MLP + residual.

    Args:
        num_heads: int. Attention heads; must divide the latent width. Defaults to 8 (the paper).
        widening_factor: int. MLP hidden width over the latent width. Defaults to 1 (the paper).

    Call arguments:
        latents: tensor `(batch, num_latents, latent_dim)`.

    Example:
        >>> SelfAttentionBlock(num_heads=4)(np.zeros((2, 8, 32))).shape
        (2, 8, 32)
    """

    def __init__(self, num_heads=8, widening_factor=1, attention_kernel="matmul", **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("widening_factor", widening_factor)
        # === Config ===
        self.num_heads = int(num_heads)
        self.widening_factor = int(widening_factor)
        self.attention_kernel = _check_kernel(attention_kernel)

    def build(self, latents_shape):
        width = latents_shape[-1]
        check_heads("latent_dim", width, self.num_heads)
        policy = self.dtype_policy
        self.attn_norm = layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="attn_norm")
        self.qkv = layers.Dense(3 * width, dtype=policy, name="qkv")  # queries, keys, values in one matmul
        self.output_proj = layers.Dense(width, dtype=policy, name="output")
        self.mlp = MLP(self.widening_factor, dtype=policy, name="mlp")
        for layer in (self.attn_norm, self.qkv, self.output_proj, self.mlp):
            layer.build(latents_shape)

    def call(self, latents, return_attention_scores=False):
        qkv = self.qkv(self.attn_norm(latents))  # (batch, latents, 3 * width)
        q, k, v = ops.split(qkv, 3, axis=-1)
        attended, weights = _attend(q, k, v, self.num_heads, return_attention_scores, self.attention_kernel)
        x = latents + self.output_proj(attended)
        x = self.mlp(x)
        return (x, weights) if return_attention_scores else x

    def compute_output_shape(self, latents_shape):
        return latents_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, widening_factor=self.widening_factor,
                      attention_kernel=self.attention_kernel)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LatentTransformer(layers.Layer):
    """A stack of `SelfAttentionBlock`s on the latent array.

    Args:
        num_blocks: int. Self-attention blocks. Defaults to 6 (the paper's ImageNet setting).
        num_heads: int. Heads per block. Defaults to 8.
        widening_factor: int. MLP widening. Defaults to 1.

    Call arguments:
        latents: tensor `(batch, num_latents, latent_dim)`.

    Example:
        >>> LatentTransformer(num_blocks=2, num_heads=4)(np.zeros((2, 8, 32))).shape
        (2, 8, 32)
    """

    def __init__(self, num_blocks=6, num_heads=8, widening_factor=1, attention_kernel="matmul", **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_blocks", num_blocks)
        # === Config ===
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.widening_factor = int(widening_factor)
        self.attention_kernel = _check_kernel(attention_kernel)
        self.blocks = [
            SelfAttentionBlock(num_heads, widening_factor, attention_kernel, dtype=self.dtype_policy,
                               name=f"block_{i}")
            for i in range(self.num_blocks)
        ]

    def build(self, latents_shape):
        for block in self.blocks:
            block.build(latents_shape)

    def call(self, latents):
        for block in self.blocks:
            latents = block(latents)
        return latents

    def compute_output_shape(self, latents_shape):
        return latents_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_blocks=self.num_blocks, num_heads=self.num_heads, widening_factor=self.widening_factor,
                      attention_kernel=self.attention_kernel)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvStem(layers.Layer):
    """The Perceiver IO paper's convolutional pre-processing for images (Jaegle et al. 2022, arXiv 2107.14795,
    section 4.5 and appendix: "conv+maxpool", the ResNet stem): a 7x7 convolution with stride 2, batch norm, ReLU and
    a 3x3 max-pool with stride 2, so each of the (H/4) x (W/4) tokens the cross-attention sees describes a 4 x 4
    patch and its surroundings (a 11 x 11 pixel receptive field, the 7x7 kernel widened by the pool), not one
    pixel.

    Args:
        channels: int. Output channels of the convolution. Defaults to 64 (the paper's ResNet stem).

    A volume `(batch, slices, H, W, channels_in)` goes through slice by slice (the slices folded into the batch):
    the stem is 2-D, the slices keep their resolution, and the Fourier positions that follow run over slice, row and
    column, so the latents attend to every token of the scan (issue 28's volume Perceiver).

    Call arguments:
        inputs: tensor `(batch, H, W, channels_in)`, or `(batch, slices, H, W, channels_in)`.
        training: bool. Batch norm uses the batch statistics when True.

    Returns:
        A tensor `(batch, ceil(H / 4), ceil(W / 4), channels)`, or `(batch, slices, ceil(H / 4), ceil(W / 4),
        channels)`.
    """

    def __init__(self, channels=64, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("channels", channels)
        # === Config ===
        self.channels = int(channels)
        # === Layers ===
        policy = self.dtype_policy
        self.conv = layers.Conv2D(channels, 7, strides=2, padding="same", use_bias=False, dtype=policy, name="conv")
        # momentum 0.9, not Keras's 0.99: a few hundred steps per run, and the moving statistics must keep up
        self.norm = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy, name="norm")
        self.pool = layers.MaxPooling2D(3, strides=2, padding="same", dtype=policy, name="pool")

    def build(self, input_shape):
        if len(input_shape) not in (4, 5):
            raise ValueError(f"ConvStem needs images (batch, H, W, channels) or volumes (batch, slices, H, W, "
                             f"channels), got {tuple(input_shape)}.")
        image_shape = (None, *input_shape[-3:])
        self.conv.build(image_shape)
        shape = self.conv.compute_output_shape(image_shape)
        self.norm.build(shape)
        self.pool.build(shape)

    def call(self, inputs, training=None):
        if len(inputs.shape) == 5:  # a volume: each slice through the 2-D stem
            batch, slices = ops.shape(inputs)[0], inputs.shape[1]
            images = ops.reshape(inputs, (-1, *inputs.shape[2:]))
            out = self.call(images, training=training)
            return ops.reshape(out, (batch, slices, *out.shape[1:]))
        return self.pool(ops.relu(self.norm(self.conv(inputs), training=training)))

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 5:
            return (input_shape[0], input_shape[1], *self.compute_output_shape((None, *input_shape[2:]))[1:])
        return self.pool.compute_output_shape(self.conv.compute_output_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


PREPROCESSORS = ("pixels", "conv")


def token_grid(input_shape, preprocessor):
    """Index dimensions of the tokens the cross-attention sees: the pixel grid, or a quarter of it per image axis for
    the convolutional stem (stride 2, then a stride-2 pool, both with "same" padding; a volume's slices are kept)."""
    dims = tuple(input_shape[:-1])
    if preprocessor == "pixels":
        return dims
    return dims[:-2] + tuple(-(-n // 4) for n in dims[-2:])  # ceil(ceil(n / 2) / 2)


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
    """Every setting of a Perceiver classifier. Build one with `PerceiverConfig.preset(name, **overrides)`."""

    input_shape: tuple = (64, 64, 3)  # (*index_dims, channels) of one example; 1-D, 2-D and 3-D grids work
    num_classes: int = 2  # logits out
    num_latents: int = 64  # N, rows of the learned latent array
    latent_dim: int = 128  # D, width of the latent array
    num_cross_attends: int = 2  # cross-attends, each followed by the latent Transformer (paper: 8)
    num_self_attends_per_block: int = 2  # self-attention blocks in the latent Transformer (paper: 6)
    num_self_attend_heads: int = 4  # heads of each latent self-attention (paper: 8)
    num_cross_attend_heads: int = 1  # heads of each cross-attention (paper: 1)
    cross_attend_qk_dim: typing.Optional[int] = None  # None: min(latent width, input width) as in the paper
    cross_attend_widening: int = 1  # MLP widening after cross-attention (paper: 1)
    self_attend_widening: int = 1  # MLP widening in the latent Transformer (paper: 1)
    num_bands: int = 6  # K Fourier bands per axis (paper: 64)
    max_resolution: typing.Optional[tuple] = None  # per-axis mu; None: the grid size (paper: 224 for ImageNet)
    concat_pos: bool = True  # include raw positions among the Fourier features (paper: yes)
    sine_only: bool = False  # sines only, no cosines (paper: no)
    share_cross_attend_weights: bool = True  # cross-attends 2..N share weights (paper: yes)
    share_latent_transformer: bool = True  # one latent Transformer for all repeats (paper: yes)
    preprocessor: str = "pixels"  # "pixels" (Perceiver paper) or "conv" (Perceiver IO's conv+maxpool, `ConvStem`)
    conv_channels: int = 64  # output channels of the "conv" pre-processor (Perceiver IO: 64)
    attention_kernel: str = "matmul"  # "matmul" or "fused" (`_attend`; train.py picks `default_attention_kernel`)

    def __post_init__(self):
        hints = typing.get_type_hints(PerceiverConfig)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # JSON gives lists for tuples
                object.__setattr__(self, field.name, tuple(value))
                value = tuple(value)
            expected = hints[field.name]
            allowed = typing.get_args(expected) or (expected,)
            if bool in allowed and not isinstance(value, bool):
                raise ValueError(f"config {field.name} must be true or false, got {value!r}.")
            if int in allowed and (isinstance(value, bool) or not isinstance(value, (int, type(None)))):
                raise ValueError(f"config {field.name} must be an integer, got {value!r}.")
            if tuple in allowed and not isinstance(value, (tuple, type(None))):
                raise ValueError(f"config {field.name} must be a list of integers, got {value!r}.")
            if value is None and type(None) not in allowed:
                raise ValueError(f"config {field.name} must be set, got None.")
        self.validate()

    def validate(self):
        if not 2 <= len(self.input_shape) <= 4 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.input_shape
        ):
            raise ValueError(
                f"input_shape {self.input_shape} must be (*index_dims, channels) with 1 to 3 index dimensions "
                "of positive integers, e.g. (64, 64, 3)."
            )
        for name in (
            "num_classes", "num_latents", "latent_dim", "num_cross_attends", "num_self_attends_per_block",
            "num_self_attend_heads", "num_cross_attend_heads", "cross_attend_widening", "self_attend_widening",
            "num_bands",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"config {name} must be at least 1, got {value}.")
        if self.preprocessor not in PREPROCESSORS:
            raise ValueError(f"config preprocessor must be one of {', '.join(PREPROCESSORS)}, got {self.preprocessor!r}.")
        if self.preprocessor == "conv" and len(self.input_shape) not in (3, 4):
            raise ValueError(f"the conv pre-processor needs 2-D images (H, W, channels) or volumes (slices, H, W, "
                             f"channels), got {self.input_shape}.")
        _check_kernel(self.attention_kernel)
        if self.conv_channels < 1:
            raise ValueError(f"config conv_channels must be at least 1, got {self.conv_channels}.")
        check_heads("latent_dim", self.latent_dim, self.num_self_attend_heads, "num_self_attend_heads")
        check_heads("cross-attention width", self.cross_attend_qk, self.num_cross_attend_heads,
                    "num_cross_attend_heads")
        if self.max_resolution is not None and len(self.max_resolution) != len(self.input_shape) - 1:
            raise ValueError(
                f"max_resolution {self.max_resolution} needs one value per index dimension of {self.input_shape[:-1]}."
            )

    @property
    def cross_attend_qk(self):
        """Width of the cross-attention's queries and keys (`default_qk_dim` of the latent and input widths)."""
        return default_qk_dim(self.latent_dim, self.input_channels, self.cross_attend_qk_dim)

    @property
    def input_channels(self):
        """Channels the cross-attention sees: data (or conv stem) channels plus `d * (2K + 1)` Fourier channels."""
        rank = len(self.input_shape) - 1
        return self.token_channels + fourier_channels(rank, self.num_bands, self.concat_pos, self.sine_only)

    @property
    def token_channels(self):
        """Data channels of each token before the Fourier features: the image's, or the conv stem's."""
        return self.input_shape[-1] if self.preprocessor == "pixels" else self.conv_channels

    @property
    def token_grid(self):
        """Index dimensions of the tokens the cross-attention sees (see `token_grid`)."""
        return token_grid(self.input_shape, self.preprocessor)

    @classmethod
    def preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}.")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown model config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}.")
        return cls(**values)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})


PRESETS = {
    # The paper's ImageNet model: 512 x 1024 latents, 8 cross-attends, 6 blocks of 8 heads, 64 bands, mu = 224.
    "paper": dict(
        input_shape=(224, 224, 3), num_classes=1000, num_latents=512, latent_dim=1024, num_cross_attends=8,
        num_self_attends_per_block=6, num_self_attend_heads=8, num_bands=64, max_resolution=(224, 224),
    ),
    # The default for 64x64x3 knee slices: small enough to train in minutes on a 2-core CPU.
    "akoa": dict(
        input_shape=(64, 64, 3), num_classes=2, num_latents=64, latent_dim=128, num_cross_attends=2,
        num_self_attends_per_block=2, num_self_attend_heads=4, num_bands=6,
    ),
    # The akoa preset behind Perceiver IO's convolutional pre-processing (conv+maxpool): 16 x 16 tokens of 64 channels.
    "akoa-conv": dict(
        input_shape=(64, 64, 3), num_classes=2, num_latents=64, latent_dim=128, num_cross_attends=2,
        num_self_attends_per_block=2, num_self_attend_heads=4, num_bands=6, preprocessor="conv",
    ),
    # For tests: runs in a fraction of a second.
    "tiny": dict(
        input_shape=(16, 16, 3), num_classes=2, num_latents=8, latent_dim=32, num_cross_attends=2,
        num_self_attends_per_block=1, num_self_attend_heads=2, num_bands=4,
    ),
}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Perceiver(keras.Model):
    """A Perceiver classifier: Fourier features, iterated cross-attention and latent Transformer, mean-pooled head.

    Args:
        config: dict or PerceiverConfig. Every architectural setting (see `PerceiverConfig`).

    Call arguments:
        inputs: tensor `(batch, *index_dims, channels)` matching `config.input_shape`.
        return_attention: bool. Also return a list with the cross-attention weights of every cross-attend, each
            `(batch, heads, num_latents, positions)`. Defaults to False.

    Example:
        >>> model = Perceiver(PerceiverConfig.preset("tiny"))
        >>> model(np.zeros((2, 16, 16, 3))).shape
        (2, 2)

    References:
        Jaegle et al., "Perceiver: General Perception with Iterative Attention", ICML 2021 (arXiv 2103.03206).
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = PerceiverConfig.from_dict(config)
        # === Config ===
        self.config = config
        c, policy = config, self.dtype_policy
        self.stem = ConvStem(c.conv_channels, dtype=policy, name="conv_stem") if c.preprocessor == "conv" else None
        self.encoding = FourierPositionEncoding(
            c.num_bands, c.max_resolution, c.concat_pos, c.sine_only, dtype=policy, name="fourier"
        )
        cross = dict(
            num_heads=c.num_cross_attend_heads, qk_dim=c.cross_attend_qk_dim, widening_factor=c.cross_attend_widening,
            attention_kernel=c.attention_kernel, dtype=policy,
        )
        # Only the distinct layers are tracked (so each shared weight is saved once); the repeat order is plain ints.
        if c.share_cross_attend_weights:
            self.cross_attend_layers = [CrossAttention(**cross, name="cross_attend_0")]
            if c.num_cross_attends > 1:
                self.cross_attend_layers.append(CrossAttention(**cross, name="cross_attend_shared"))
            self._cross_order = tuple(min(i, 1) for i in range(c.num_cross_attends))
        else:
            self.cross_attend_layers = [
                CrossAttention(**cross, name=f"cross_attend_{i}") for i in range(c.num_cross_attends)
            ]
            self._cross_order = tuple(range(c.num_cross_attends))
        transformer = dict(
            num_blocks=c.num_self_attends_per_block, num_heads=c.num_self_attend_heads,
            widening_factor=c.self_attend_widening, attention_kernel=c.attention_kernel, dtype=policy,
        )
        if c.share_latent_transformer:
            self.transformer_layers = [LatentTransformer(**transformer, name="latent_transformer")]
            self._transformer_order = (0,) * c.num_cross_attends
        else:
            self.transformer_layers = [
                LatentTransformer(**transformer, name=f"latent_transformer_{i}") for i in range(c.num_cross_attends)
            ]
            self._transformer_order = tuple(range(c.num_cross_attends))
        self.final_norm = layers.LayerNormalization(epsilon=NORM_EPSILON, dtype=policy, name="final_norm")
        self.classifier = layers.Dense(c.num_classes, dtype="float32", name="logits")  # float32 logits always

    @property
    def cross_attends(self):
        """The cross-attention layer of each repeat, in order (shared layers appear more than once)."""
        return [self.cross_attend_layers[i] for i in self._cross_order]

    @property
    def transformers(self):
        """The latent Transformer of each repeat, in order."""
        return [self.transformer_layers[i] for i in self._transformer_order]

    def build(self, input_shape):
        c = self.config
        self._check_input_shape(input_shape)
        self.latents = self.add_weight(
            shape=(c.num_latents, c.latent_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="latents",
        )
        tokens = input_shape
        if self.stem is not None:
            self.stem.build(input_shape)
            tokens = self.stem.compute_output_shape(input_shape)
        self.encoding.build(tokens)
        encoded = self.encoding.compute_output_shape(tokens)
        latent_shape = (input_shape[0], c.num_latents, c.latent_dim)
        for layer in self.cross_attend_layers:
            layer.build(latent_shape, encoded)
        for layer in self.transformer_layers:
            layer.build(latent_shape)
        self.final_norm.build((input_shape[0], c.latent_dim))
        self.classifier.build((input_shape[0], c.latent_dim))
        self.built = True

    def _check_input_shape(self, shape):
        expected, got = tuple(self.config.input_shape), tuple(shape[1:])
        if got != expected:
            raise ValueError(f"This model was configured for inputs of shape {expected}, got {got}.")

    def call(self, inputs, training=None, return_attention=False):
        pooled, maps = self._pooled(inputs, training, return_attention)
        logits = self.classifier(ops.cast(pooled, "float32"))  # (batch, classes)
        return (logits, maps) if return_attention else logits

    def features(self, inputs, training=None):
        """The pooled, normalised latents the classification head reads, `(batch, latent_dim)`: what a novelty score
        is fitted on (novelty.py)."""
        return self._pooled(inputs, training, False)[0]

    def _pooled(self, inputs, training, return_attention):
        """(pooled latents (batch, latent_dim), the cross-attention maps when asked for, else [])."""
        self._check_input_shape(inputs.shape)
        x = ops.cast(inputs, self.compute_dtype)
        if self.stem is not None:
            x = self.stem(x, training=training)  # (batch, H / 4, W / 4, conv_channels)
        x = self.encoding(x)  # (batch, positions, channels)
        batch = ops.shape(x)[0]
        z = ops.cast(self.latents, self.compute_dtype)
        z = ops.broadcast_to(z[None], (batch,) + tuple(z.shape))  # (batch, latents, latent_dim)
        standardized = standardize(x, NORM_EPSILON, self.compute_dtype)  # every cross-attention's input LayerNorm
        projected = {}  # keys/values by position in cross_attend_layers: a shared layer projects the inputs once
        maps = []
        for index, transformer in zip(self._cross_order, self.transformers):
            cross = self.cross_attend_layers[index]
            if index not in projected:
                projected[index] = cross.project_inputs(x, standardized)
            keys, values = projected[index]
            if return_attention:
                z, weights = cross.attend(z, keys, values, return_attention_scores=True)
                maps.append(weights)
            else:
                z = cross.attend(z, keys, values)
            z = transformer(z)
        return self.final_norm(ops.mean(z, axis=1)), maps  # (batch, latent_dim)

    def attention_heatmaps(self, images, batch_size=64):
        """Cross-attention maps of every cross-attend, averaged over heads and latents, on the token grid (the
        input grid, or a quarter of it per axis with the conv pre-processor: `config.token_grid`).

        Returns a float32 numpy array `(batch, num_cross_attends, *token_grid)`; each map sums to 1.
        """
        images = np.asarray(images, dtype="float32")
        index_dims = self.config.token_grid
        out = []
        for start in range(0, len(images), batch_size):
            _, maps = self(images[start : start + batch_size], return_attention=True)
            stacked = np.stack([ops.convert_to_numpy(ops.mean(m, axis=(1, 2))) for m in maps], axis=1)
            out.append(stacked.reshape(stacked.shape[:2] + index_dims))
        return np.concatenate(out).astype("float32")

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# === The model that leaves the project: pre-processing, classes and calibration inside ===
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's RGB -> L weights (they sum to 1: grey input passes unchanged)


def resize_weights(in_size, out_size):
    """`(out_size, in_size)` float32 weights of Pillow's antialiased bilinear resize along one axis.

    Each output pixel `i` is a triangle-weighted mean of the input pixels `j` around its centre `(i + 0.5) * scale`,
    the triangle widened by `scale = in / out` when shrinking (that is the antialiasing), clipped to the image and
    normalised; equal sizes give the identity. Written with `keras.ops` on a size known only when the model runs
    (a tensor under a traced export), so that the resize is two matrix products that every backend and exporter
    supports. It matches `PIL.Image.resize(..., BILINEAR)` up to Pillow's 8-bit rounding between its two passes.
    """
    scale = ops.cast(in_size, "float32") / float(out_size)
    support = ops.maximum(scale, 1.0)
    centres = (ops.arange(out_size, dtype="float32") + 0.5) * scale
    j = ops.arange(in_size, dtype="float32") + 0.5
    w = ops.maximum(1.0 - ops.abs(j[None, :] - centres[:, None]) / support, 0.0)
    return w / ops.sum(w, axis=1, keepdims=True)


def _to_8bit(x):
    """Rounds half up and clips to 0..255, as Pillow stores each pass of an 8-bit resize or conversion."""
    return ops.clip(ops.floor(x + 0.5), 0.0, 255.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Preprocess(layers.Layer):
    """Raw 8-bit images of any size to the model's input: `images.load_image` + `dataset.normalize` as layer ops.

    Casts to float32, turns grey into RGB (a 1-channel image repeated) or RGB into grey (Pillow's luma weights), as
    `channels` asks, resizes to `image_size` with Pillow's antialiased bilinear filter (`resize_weights`; not kept
    to aspect, as in training) and scales `x / 127.5 - 1`.

    Args:
        image_size: (height, width). The size the model was trained on.
        channels: int. 1 or 3, the model's input channels.

    Call arguments:
        images: `(batch, height, width, 1 or 3)` values 0..255 (uint8 or float).
    """

    def __init__(self, image_size, channels=3, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        # === Config ===
        self.image_size = tuple(int(v) for v in image_size)
        self.channels = int(channels)

    def build(self, input_shape):
        """No weights; checks that the images have 1 or 3 channels when their shape says (height and width may
        vary from call to call)."""
        if len(input_shape) != 4 or input_shape[-1] not in (None, 1, 3):
            raise ValueError(f"Preprocess needs images of shape (batch, height, width, 1 or 3), got "
                             f"{tuple(input_shape)}.")
        self.built = True

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.channels == 3:
            x = x * ops.ones((3,), "float32")  # (.., 1) broadcasts to 3 equal channels; (.., 3) is unchanged
        else:
            x = _to_8bit(ops.sum(x * ops.convert_to_tensor(_LUMA, "float32"), axis=-1, keepdims=True))
        (height, width), (h, w) = ops.shape(x)[1:3], self.image_size
        rows, cols = resize_weights(height, h), resize_weights(width, w)
        # Pillow's two passes, each rounded to 8 bits: horizontal first, unless the height shrinks by more than twice
        # what the width does (Pillow 11+ then goes vertical first). Both orders are computed and Pillow's kept: one
        # order alone stays within one grey level too, but where Pillow goes vertical first and the width shrinks as
        # well, 10-22% of pixels then differ by one (200 x 70, 300 x 120, 512 x 100, 1000 x 300 to 64 x 64), against
        # at most 1.6% with Pillow's order (tests/test_classifier.py measures both at every size it tests; Pillow
        # before 11 always goes horizontal first, and there these sizes keep the one-grey-level promise only)
        across = _to_8bit(ops.einsum("oh,bhpc->bopc", rows, _to_8bit(ops.einsum("pw,bhwc->bhpc", cols, x))))
        down = _to_8bit(ops.einsum("pw,bowc->bopc", cols, _to_8bit(ops.einsum("oh,bhwc->bowc", rows, x))))
        shrink_h, shrink_w = ops.cast(height, "int32") - h, ops.cast(width, "int32") - w
        vertical_first = ops.logical_and(shrink_h > 0, shrink_h > 2 * shrink_w)
        return ops.where(vertical_first, down, across) / 127.5 - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_size, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=list(self.image_size), channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerceiverClassifier(keras.Model):
    """A trained Perceiver with everything needed to use it: raw 8-bit images in, calibrated probabilities out.

    It carries its pre-processing (`Preprocess`: the resize to the trained size, grey to RGB, `x / 127.5 - 1`), its
    class names, and its calibration (probabilities are `softmax(logits / temperature)`, the temperature fitted on
    the validation split, calibration.py; `min_confidence` is the run's threshold below which a verdict is
    "uncertain"). Saved as one `.keras` file (train.py writes `model.keras` in every run) it loads in safe mode with
    Keras and this file alone:

        >>> import keras, modules
        >>> model = keras.saving.load_model("goliath/model.keras")   # doctest: +SKIP
        >>> model.class_names, model.predict(images_uint8)           # doctest: +SKIP

    Args:
        perceiver_config: dict or PerceiverConfig of the Perceiver inside.
        class_names: list[str]. Name of each output, in order.
        temperature: float. Calibration temperature. Defaults to 1 (the raw softmax).
        min_confidence: float | None. The run's "uncertain" threshold, or None. Defaults to None.

    Call arguments:
        images: `(batch, height, width, 1 or 3)` 8-bit values, any height and width.
    """

    def __init__(self, perceiver_config, class_names, temperature=1.0, min_confidence=None, **kwargs):
        super().__init__(**kwargs)
        config = perceiver_config
        if isinstance(config, dict):
            config = PerceiverConfig.from_dict(config)
        if len(class_names) != config.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model of {config.num_classes} outputs")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        # === Config ===
        self.class_names = [str(c) for c in class_names]
        self.temperature = float(temperature)
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        self.preprocess = Preprocess(config.input_shape[:2], config.input_shape[2], name="preprocess")
        self.perceiver = Perceiver(config, dtype=self.dtype_policy, name="perceiver")

    @classmethod
    def wrap(cls, perceiver, class_names, temperature=1.0, min_confidence=None):
        """A built PerceiverClassifier holding a copy of a trained Perceiver's weights."""
        model = cls(perceiver.config, class_names, temperature, min_confidence, dtype=perceiver.dtype_policy,
                    name="perceiver_classifier")
        model.build((None, None, None, perceiver.config.input_shape[2]))
        model.perceiver.set_weights(perceiver.get_weights())
        return model

    def build(self, input_shape):
        self.preprocess.build(input_shape)
        self.perceiver.build((None, *self.perceiver.config.input_shape))
        self.built = True

    def call(self, images):
        logits = self.perceiver(self.preprocess(images))
        return ops.softmax(ops.cast(logits, "float32") / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.class_names))

    def get_config(self):
        config = super().get_config()
        config.update(perceiver_config=self.perceiver.config.to_dict(), class_names=list(self.class_names),
                      temperature=self.temperature, min_confidence=self.min_confidence)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_model(config, dtype=None):
    """A built Perceiver for `config` (a PerceiverConfig, a dict or a preset name). `dtype` is a Keras dtype policy."""
    if isinstance(config, str):
        config = PerceiverConfig.preset(config)
    elif isinstance(config, dict):
        config = PerceiverConfig.from_dict(config)
    model = Perceiver(config, dtype=dtype, name="perceiver")
    model.build((None,) + tuple(config.input_shape))
    return model


def forward_flops(config):
    """Forward FLOPs per example (2 per multiply-add of the matmuls and attention; norms and activations left out)."""
    c = config
    positions = math.prod(c.token_grid)
    cin, d, n = c.input_channels, c.latent_dim, c.num_latents
    qk = c.cross_attend_qk
    macs = 0
    if c.preprocessor == "conv":  # the 7x7 convolution at stride 2, on every slice of a volume
        slices = math.prod(c.input_shape[:-3])
        macs += slices * math.prod(-(-s // 2) for s in c.input_shape[-3:-1]) * 49 * c.input_shape[-1] * c.conv_channels
    distinct_cross = min(c.num_cross_attends, 2) if c.share_cross_attend_weights else c.num_cross_attends
    macs += distinct_cross * positions * cin * 2 * qk  # keys and values, once per distinct cross-attend layer
    per_cross = n * d * qk + n * positions * qk * 2 + n * qk * d + 2 * n * d * d * c.cross_attend_widening
    per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * d * c.self_attend_widening
    macs += c.num_cross_attends * (per_cross + c.num_self_attends_per_block * per_block)
    macs += d * c.num_classes
    return 2 * macs


def _summary(args):
    config = PerceiverConfig.preset(args.preset)
    model = build_model(config)
    model.summary(expand_nested=args.expand)
    c = config
    positions = math.prod(c.token_grid)
    data, source = c.token_channels, ("data" if c.preprocessor == "pixels" else "conv stem")
    print(f"preset: {args.preset}  backend: {keras.backend.backend()}")
    print(f"parameters: {model.count_params() / 1e6:.2f} M")
    print(f"forward GFLOPs per image: {forward_flops(config) / 1e9:.3f}")
    print(f"input: {tuple(c.input_shape)} -> {positions} positions x {c.input_channels} channels "
          f"({data} {source} + {c.input_channels - data} Fourier, {c.num_bands} bands)")
    print(f"latents: {c.num_latents} x {c.latent_dim}; {c.num_cross_attends} cross-attends x "
          f"{c.num_self_attends_per_block} self-attention blocks of {c.num_self_attend_heads} heads")
    print(f"output: (batch, {c.num_classes}) logits")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print a Perceiver's summary: parameters, GFLOPs, shapes.")
    parser.add_argument("--preset", default="akoa", choices=sorted(PRESETS), help="model preset (default: akoa)")
    parser.add_argument("--expand", action="store_true", help="show nested layers in the summary (default: off)")
    from perceiver import errors  # the command's shared flags; the layers need nothing of it

    errors.add_common_flags(parser)
    _summary(parser.parse_args(argv))


if __name__ == "__main__":
    main()
