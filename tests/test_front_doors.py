"""The seed project's names stay on top as front doors to the package: `import modules`, `import dataset`,
`import phantom` and `import train` give the package's modules themselves, and the shipped goliath/model.keras loads with Keras after
`import modules` alone, as the README says."""

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_front_doors_are_the_package_modules():
    import dataset
    import modules
    import phantom
    from perceiver import dataset as package_dataset
    from perceiver import modules as package_modules
    from perceiver import phantom as package_phantom

    import train
    from perceiver import training as package_training

    assert modules is package_modules and dataset is package_dataset and phantom is package_phantom
    assert train is package_training  # train.py is a command line and a door to its machinery
    assert modules.PerceiverClassifier.__module__ == "perceiver.modules"


def test_the_shipped_model_loads_with_keras_after_import_modules_alone():
    """In a fresh interpreter, as a user without the rest of the code would: `import modules`, then Keras' loader."""
    code = ("import numpy as np, keras, modules\n"
            "m = keras.saving.load_model('goliath/model.keras', safe_mode=True)\n"
            "x = np.full((1, 228, 260, 1), 100, np.uint8)\n"
            "p = np.asarray(m.predict(x, verbose=0))\n"
            "print(type(m).__name__, m.class_names, p.shape, float(p.sum()))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    name, rest = done.stdout.split(" ", 1)
    assert name == "PerceiverClassifier" and rest.startswith("['left', 'right'] (1, 2)")
    assert np.isclose(float(rest.split()[-1]), 1.0)  # calibrated probabilities of the two classes
