"""Train a Perceiver to tell left knees from right, evaluate it on held-out patients, and write a run folder.

    python train.py                                   # synthetic knee set + akoa-conv preset (~5 min, 2-core CPU)
    python train.py --data /data/AKOA --out runs/akoa # real AKOA slices, or any DIR/<class>/*.png folder
    python train.py --out runs/akoa --resume          # continue a killed run from its last completed epoch
    python train.py --config my.json --lr 1e-3       # settings from a JSON file; flags override it

With no arguments the embedded synthetic set is made (or reused) under data/, the `akoa-conv` preset is trained, and
the test patients' accuracy is printed at the end: `test: accuracy A (correct/total images) ...` (the README gives
the measured figures and the command behind each; a seed's run is deterministic). The run folder
(default runs/<preset>-<time>) holds config.json, split.csv, model.weights.h5 (best on validation loss),
last.weights.h5, history.csv, metrics.json, acc.png, loss.png, confusion.png, roc.png, report.html (every figure and
metric on one page; `python -m perceiver.htmlreport RUN` writes it again) and tensorboard/.

Several devices: `--distribute mirrored` (TensorFlow, every local GPU), `--distribute multi-worker` (TensorFlow, one
process per machine, each with TF_CONFIG set), `--distribute data-parallel` (JAX, every local device).
`--cpu-devices 2` splits the CPU into logical devices, to try the multi-device paths on a laptop.
"""

import sys

from perceiver import training as _package_module

if __name__ == "__main__":
    sys.exit(_package_module.main())
sys.modules[__name__] = _package_module  # `import train` is perceiver.training itself (train.parse_settings, ...)
