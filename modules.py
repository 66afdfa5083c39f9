"""The model's layers, as the seed project named them: a front door to `perceiver.modules`.

    python modules.py --preset akoa-conv     # summary, parameters, forward GFLOPs per image, shapes
    import modules; keras.saving.load_model("goliath/model.keras")   # the layers are registered on import

`import modules` gives the package module itself (the same object as `perceiver.modules`, private names included),
so code and saved models that name `modules` keep working.
"""

import sys

if __name__ == "__main__":  # TensorFlow's start-up lines stay off the terminal (perceiver.errors.quiet_tensorflow)
    from perceiver import errors

    errors.start_command()

from perceiver import modules as _package_module  # noqa: E402

if __name__ == "__main__":
    sys.exit(_package_module.main())
sys.modules[__name__] = _package_module
