"""The training recipe shared by train.py and the baselines in bench/: optimizer with warm-up and cosine decay, and
the classification loss with optional label smoothing.

Keeping these in one place means a baseline trained by bench/experiments/baselines.py gets exactly the optimizer family,
schedule and loss that train.py gives the Perceiver.
"""

from __future__ import annotations

import keras
from keras import ops

NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "latents")  # variable names kept out of decoupled weight decay


def make_optimizer(*, optimizer, lr, weight_decay, warmup_epochs, epochs, steps_per_epoch, clip_norm=0.0):
    """LAMB or AdamW with a linear warm-up to `lr`, then cosine decay to 0 over the remaining steps.

    Args:
        optimizer: str. "lamb" (the paper) or "adamw".
        lr: float. Peak learning rate.
        weight_decay: float. Decoupled weight decay; 0 turns it off. Biases, norms and latents never decay.
        warmup_epochs: float. Length of the warm-up, in epochs.
        epochs: int. Length of the whole run, in epochs.
        steps_per_epoch: int. Optimizer steps per epoch.
        clip_norm: float. Clip each gradient to this norm; 0 turns it off. Defaults to 0.
    """
    if optimizer not in ("lamb", "adamw"):
        raise ValueError(f"optimizer {optimizer!r} is not one of lamb, adamw")
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else lr, decay_steps=max(1, total - warmup),
        warmup_target=lr if warmup else None, warmup_steps=warmup,
    )
    common = dict(learning_rate=schedule, weight_decay=weight_decay or None, clipnorm=clip_norm or None)
    opt = keras.optimizers.Lamb(**common) if optimizer == "lamb" else keras.optimizers.AdamW(**common)
    if weight_decay:
        opt.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return opt


def make_loss(num_classes, label_smoothing):
    """Cross-entropy on logits over integer labels; with label smoothing, over smoothed one-hot targets."""
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    def loss(y_true, logits):
        return smoothed(ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes), logits)

    return loss
