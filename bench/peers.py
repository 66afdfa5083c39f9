"""Peer Perceivers for `bench/speed/train_speed.py` (and bench/experiments/time_to_accuracy.py), built at this
project's sizes, with their forward FLOPs counted by hand.

Two public PyTorch implementations (optional benchmark requirements, `pip install -r bench/requirements.txt`):

- `perceiver-pytorch` (lucidrains, `perceiver_pytorch.Perceiver`): interleaved cross-attends like ours, weights of
  cross-attends 2..N tied (`weight_tie_layers=True`), Fourier features concatenated like ours. Its feed-forwards are
  fixed by the library: GEGLU with widening 4 (`Linear(d, 8d)`, `Linear(4d, d)`), where ours widen by 1 (the paper).
  Its `max_freq` is our `mu` (its top band is `max_freq / 2`), so `max_freq = image side` gives the same bands.
- Hugging Face `transformers` (`PerceiverForImageClassificationFourier`, built from its parts because that class fixes
  64 bands and `max_resolution = 224`): ONE cross-attend, then the self-attention block repeated `num_blocks` times
  with shared weights, then a one-query cross-attention decoder to the logits. Its cross-attention query/key width is
  the input width (`cross_attention_shape_for_attention="kv"`), ours the smaller of latent and input widths.

`size` everywhere is a benchmark configuration dict of `bench.common.CONFIGS`: `image` (H, W, C), `num_latents`,
`latent_dim`, `num_cross_attends`, `num_self_attends_per_block`, `num_self_attend_heads`, `num_bands`, `num_classes`.

FLOPs: 2 per multiply-add of every matmul and attention product, norms, activations and softmax left out, the same
rule as `modules.forward_flops`; a training step is counted as 3x the forward.
"""

from __future__ import annotations

import importlib.util
import math

PEERS = ("perceiver-pytorch", "transformers")
_MODULES = {"perceiver-pytorch": ("torch", "einops", "perceiver_pytorch"), "transformers": ("torch", "transformers")}


def missing(name):
    """None when peer `name` can be imported, else a short reason such as 'not installed (perceiver_pytorch)'."""
    absent = [m for m in _MODULES[name] if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(absent)}); pip install -r bench/requirements.txt" if absent else None


def _input_channels(size):
    rank = len(size["image"]) - 1
    return size["image"][-1] + rank * (2 * size["num_bands"] + 1)


def build_perceiver_pytorch(size):
    """A `perceiver_pytorch.Perceiver` at `size`, no dropout, cross-attends 2..N weight-tied."""
    from perceiver_pytorch import Perceiver

    d, heads = size["latent_dim"], size["num_self_attend_heads"]
    return Perceiver(
        input_channels=size["image"][-1],
        input_axis=len(size["image"]) - 1,
        num_freq_bands=size["num_bands"],
        max_freq=max(size["image"][:-1]),  # their top band is max_freq / 2, ours mu / 2 with mu the image side
        depth=size["num_cross_attends"],
        num_latents=size["num_latents"],
        latent_dim=d,
        cross_heads=1,
        latent_heads=heads,
        cross_dim_head=min(d, _input_channels(size)),  # ours: one head of width min(latent, input)
        latent_dim_head=d // heads,
        num_classes=size["num_classes"],
        attn_dropout=0.0,
        ff_dropout=0.0,
        weight_tie_layers=True,
        self_per_cross_attn=size["num_self_attends_per_block"],
    )


def flops_perceiver_pytorch(size):
    """Forward FLOPs per example of `build_perceiver_pytorch(size)` (keys/values recomputed at every cross-attend)."""
    m = math.prod(size["image"][:-1])
    cin, d, n = _input_channels(size), size["latent_dim"], size["num_latents"]
    qk = min(d, cin)
    ff = n * (d * 8 * d + 4 * d * d)  # GEGLU, mult 4: Linear(d, 8d), Linear(4d, d)
    cross = n * d * qk + m * cin * 2 * qk + 2 * n * m * qk + n * qk * d + ff
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + ff
    macs = size["num_cross_attends"] * (cross + size["num_self_attends_per_block"] * block)
    return 2 * (macs + d * size["num_classes"])


def build_transformers(size):
    """Hugging Face's Fourier image Perceiver with our bands and sizes: 1 cross-attend, `num_cross_attends` repeats
    of the (shared) self-attention block, no dropout.

    With `size["preprocessor"] == "conv"` (our `akoa-conv` preset) its input goes through Hugging Face's own
    Perceiver IO conv stem instead of raw pixels (`prep_type="conv"`: 7x7 stride-2 convolution to
    `size["conv_channels"]`, batch norm, ReLU, 3x3 stride-2 max-pool, the stem of its
    `PerceiverForImageClassificationConvProcessing`), with Fourier features for a grid of a quarter of the image side
    as that class uses (its pool has no padding, so a 64-pixel side gives 15 x 15 tokens where ours has 16 x 16)."""
    from transformers import PerceiverConfig, PerceiverModel
    from transformers.models.perceiver import modeling_perceiver as hf

    d, conv = size["latent_dim"], size.get("preprocessor", "pixels") == "conv"
    config = PerceiverConfig(
        num_latents=size["num_latents"],
        d_latents=d,
        d_model=d,
        num_blocks=size["num_cross_attends"],  # repeats of the self-attention block (HF has one cross-attend only)
        num_self_attends_per_block=size["num_self_attends_per_block"],
        num_self_attention_heads=size["num_self_attend_heads"],
        num_cross_attention_heads=1,
        self_attention_widening_factor=1,
        cross_attention_widening_factor=1,
        attention_probs_dropout_prob=0.0,
        num_labels=size["num_classes"],
        image_size=size["image"][0],
    )

    class FourierClassifier(hf.PerceiverForImageClassificationFourier):
        def __init__(self, config):
            hf.PerceiverPreTrainedModel.__init__(self, config)
            self.num_labels = config.num_labels
            self.perceiver = PerceiverModel(
                config,
                input_preprocessor=hf.PerceiverImagePreprocessor(
                    config,
                    prep_type="conv" if conv else "pixels",
                    spatial_downsample=4 if conv else 1,
                    in_channels=size["image"][-1],
                    out_channels=size.get("conv_channels", 64),
                    fourier_position_encoding_kwargs={
                        "concat_pos": True,
                        "max_resolution": tuple(side // 4 if conv else side for side in size["image"][:-1]),
                        "num_bands": size["num_bands"],
                        "sine_only": False,
                    },
                ),
                decoder=hf.PerceiverClassificationDecoder(
                    config,
                    num_channels=d,
                    trainable_position_encoding_kwargs={"num_channels": d, "index_dims": 1},
                    use_query_residual=True,
                ),
            )
            self.post_init()

    return FourierClassifier(config)


def flops_transformers(size):
    """Forward FLOPs per example of `build_transformers(size)`, decoder (and conv stem, with one) included."""
    m, cin, stem = math.prod(size["image"][:-1]), _input_channels(size), 0
    if size.get("preprocessor", "pixels") == "conv":
        half = [math.ceil(side / 2) for side in size["image"][:-1]]  # the stride-2 "same" convolution
        channels = size.get("conv_channels", 64)
        stem = math.prod(half) * 49 * size["image"][-1] * channels
        m = math.prod((side - 3) // 2 + 1 for side in half)  # the unpadded 3x3 stride-2 pool
        cin = channels + len(half) * (2 * size["num_bands"] + 1)
    d, n = size["latent_dim"], size["num_latents"]
    qk = v = cin  # cross_attention_shape_for_attention="kv": query/key and value width = input width
    cross = n * d * qk + m * cin * (qk + v) + n * m * (qk + v) + n * v * d + 2 * n * d * d
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * d
    decoder = d * d + n * d * 2 * d + 2 * n * d + d * d + 2 * d * d + d * size["num_classes"]  # one query
    macs = stem + cross + size["num_cross_attends"] * size["num_self_attends_per_block"] * block + decoder
    return 2 * macs


BUILDERS = {"perceiver-pytorch": build_perceiver_pytorch, "transformers": build_transformers}
FLOPS = {"perceiver-pytorch": flops_perceiver_pytorch, "transformers": flops_transformers}
