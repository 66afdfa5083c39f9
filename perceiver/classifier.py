"""The model as one file that leaves the project: load it in one line, save it as `.keras`, export it.

    from perceiver import classifier
    model = classifier.load("goliath")              # a run folder, or a .keras file such as goliath/model.keras
    model.class_names, model.predict(images)        # uint8 (n, h, w, 1 or 3), any size -> calibrated probabilities

    python driver.py --export knee.onnx                    # the export command: --run RUN, --format, --weights
    python driver.py --export knee_savedmodel --format savedmodel

The model is `modules.PerceiverClassifier`: the trained Perceiver with its pre-processing (the resize to the trained
size with Pillow's antialiased bilinear filter, grey to RGB, `x / 127.5 - 1`), its class names and its calibration
temperature inside, so raw 8-bit images give calibrated probabilities. Its resize is the training one up to one grey
level (Pillow rounds to 8 bits between its two passes); images already at the trained size go through unchanged, and
then it gives driver.py's probabilities exactly (`tests/test_classifier.py`). It does not carry driver.py's input
checks: a blank image or an axial slice gets probabilities like any other (driver.py calls them unsuitable or refuses
them: inputs.check_suitable, inputs.check_plane).

Formats:
- `keras`: one `.keras` file (train.py writes `model.keras` in every run). Loads in safe mode with Keras and
  modules.py: `keras.saving.load_model(path)` after `import modules`, or `classifier.load(path)`.
- `savedmodel`: a TensorFlow SavedModel folder; `tf.saved_model.load(path).serve(images)` with uint8 images
  `(n, h, w, c)`. Needs TensorFlow only (no Keras, no modules.py). Its class names and calibration are in
  `perceiver_classifier.json` inside the folder.
- `onnx`: one `.onnx` file, for onnxruntime and other ONNX runtimes; input `images`, uint8 with its dimensions named
  `(batch, height, width, channels)`, output the probabilities `(batch, classes)`; the class names and calibration
  are in the file's metadata (`custom_metadata_map`): a text value as it is (`input`, `output`), a list or number
  as JSON (`class_names` is `["left", "right"]`, `temperature` a number; `read_onnx_metadata` decodes them). Needs
  the optional packages tf2onnx and onnx (`pip install tf2onnx onnx`), under the TensorFlow backend.
- `litert`: one `.tflite` file for LiteRT (TensorFlow Lite), whose converter needs fixed shapes: it takes images at
  the trained size, `(1, 64, 64, 3)` for the reference run; metadata in a `<file>.json` beside it.
Every format is checked against Keras on the same images (max difference of probabilities under 1e-5) by
tests/test_classifier.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
import zipfile

from perceiver import fileio
from perceiver import runs
from perceiver.errors import UsageError

FORMATS = ("keras", "savedmodel", "onnx", "litert")
DEFAULT_CLASSES = ("left", "right")  # the names of a two-output .keras file that is not this project's classifier
METADATA = "perceiver_classifier.json"  # a SavedModel folder's (and a .tflite file's sidecar) class names etc.


def load_model(path, *, weights="best", classes=None):
    """The one loader of a model for inference: a run folder (rebuilt from config.json and its weights,
    `runs.load_run`) or a `.keras` file (safe mode, `read_keras`).

    A run's own model.keras beside its config.json is cross-checked against it and against calibration.json: the
    classes, the input size and channels and the calibration are recorded in both, and a disagreement (one file
    edited or replaced) is refused rather than one of them believed.

    Args:
        path: str | Path. A run folder, or a `.keras` file.
        weights: str. "best" or "last" weights of a run folder. Defaults to "best".
        classes: list[str] | None. Class names for a `.keras` file that holds another model than this project's
            classifier. Defaults to left, right for two outputs.

    Returns:
        runs.LoadedRun.

    Raises:
        UserError (UsageError, runs.RunError): one sentence when the path holds no usable model.
    """
    path = pathlib.Path(path)
    if path.suffix == ".keras":
        return _load_keras_file(path, classes)
    if classes is not None:
        raise UsageError("--classes applies only to a .keras file; a run folder names its classes in config.json.")
    return runs.load_run(path, weights=weights)


def _load_keras_file(path, classes):
    from perceiver.modules import PerceiverClassifier

    model = read_keras(path)
    if isinstance(model, PerceiverClassifier):  # train.py's model.keras: classes and calibration inside
        if classes is not None and list(classes) != model.class_names:
            raise UsageError(f"{path} names its classes ({','.join(model.class_names)}); leave out --classes.")
        c = model.perceiver.config
        config = _cross_check(path, model) if _in_its_run(path) else {}  # then its test split can be classified
        return runs.LoadedRun(run_dir=path.parent, config=config, model=model.perceiver,
                              classes=list(model.class_names), image_size=tuple(c.input_shape[:2]),
                              channels=int(c.input_shape[2]), weights_path=path, temperature=model.temperature,
                              min_confidence=model.min_confidence, classifier=model)
    config = getattr(model, "config", None)  # a Perceiver knows its shapes; another model may declare them
    try:
        shape = tuple(config.input_shape) if config is not None else tuple(model.input_shape[1:])
        outputs = int(config.num_classes) if config is not None else int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError):
        shape, outputs = None, None
    if shape is None or len(shape) != 3 or None in shape:
        raise UsageError(f"{path} does not take fixed-size images (its input shape is {shape}).")
    if classes is None:
        if outputs != 2:
            raise UsageError(f"{path} has {outputs} outputs; name them in order with --classes a,b,c.")
        classes = list(DEFAULT_CLASSES)
    if len(classes) != outputs:
        raise UsageError(f"--classes names {len(classes)} classes but {path} has {outputs} outputs.")
    return runs.LoadedRun(run_dir=path.parent, config={}, model=model, classes=list(classes),
                          image_size=tuple(int(v) for v in shape[:2]), channels=int(shape[2]), weights_path=path)


def _in_its_run(path):
    """Whether the .keras file `path` is a run's own model.keras, beside its config.json."""
    return path.name == runs.MODEL_FILE and (path.parent / runs.CONFIG).is_file()


def _cross_check(path, model):
    """config.json of the run folder holding model.keras (`path`), after checking that the run's files agree with
    each other (`runs.check_agreement`: model.keras against config.json and calibration.json).

    Raises:
        runs.RunError: naming the files and what differs.
    """
    run_dir = path.parent
    config = runs.read_config(run_dir)
    runs.check_input_size(config["data"], model.perceiver.config, run_dir / runs.CONFIG)
    runs.check_agreement(run_dir, config, model.perceiver.config, *runs.read_calibration(run_dir))
    return config


def load(path="goliath", *, weights="best"):
    """The classifier of a run folder or `.keras` file: raw uint8 images in, calibrated probabilities out.

    Args:
        path: str | Path. A run folder written by train.py, or a `.keras` file of a PerceiverClassifier. Defaults
            to the reference run `goliath/` (relative to the current folder).
        weights: str. "best" or "last" weights of a run folder. Defaults to "best".

    Returns:
        modules.PerceiverClassifier (a keras.Model), with `class_names`, `temperature` and `min_confidence`.

    Raises:
        UserError: one sentence when the path holds no usable model (`load_model`).
    """
    from perceiver.modules import PerceiverClassifier

    path = pathlib.Path(path)
    loaded = load_model(path, weights=weights)
    if loaded.classifier is not None:  # a .keras file of this project's classifier: itself
        return loaded.classifier
    if path.suffix == ".keras":
        raise UsageError(f"{path} holds a {type(loaded.model).__name__}, not a classifier with its classes and "
                         "pre-processing; classify with driver.py --run and --classes, or export a run folder.")
    return PerceiverClassifier.wrap(loaded.model, loaded.classes, loaded.temperature, loaded.min_confidence)


def read_keras(path):
    """Loads a `.keras` file in safe mode (no Python lambdas deserialised), after checking its SHA-256 when one is
    recorded beside it (a run's model.keras; a file shared alone has none and its zip CRC still catches damage).

    Raises:
        UsageError, runs.RunError: one sentence naming the file.
    """
    import keras

    from perceiver import modules  # noqa: F401  (registers the Perceiver's layers for deserialisation)

    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; pass a .keras file or a run folder.")
    runs.verify_checksum(path, warn=False)
    if not zipfile.is_zipfile(path):  # Keras says "File not found" for a truncated or empty file
        raise UsageError(f"{path} is not a complete .keras file (a .keras file is a zip archive, and this one of "
                         f"{path.stat().st_size:,} bytes has no readable zip directory: truncated, or another kind "
                         "of file); copy it again, or export it again from its run folder.")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # a damaged zip, an unknown layer, a lambda refused by safe mode, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load {path} in safe mode: {first}") from None


def metadata(model, fmt=None):
    """What a person without Keras needs beside the exported graph: classes, calibration, input."""
    c = model.perceiver.config
    given = ("uint8 images (batch, height, width, 1 or 3), any height and width; resized inside to "
             f"{c.input_shape[0]} x {c.input_shape[1]}")
    if fmt == "litert":
        given = f"one uint8 image (1, {c.input_shape[0]}, {c.input_shape[1]}, {c.input_shape[2]}): the trained size"
    return {
        "class_names": list(model.class_names),
        "temperature": model.temperature,
        "min_confidence": model.min_confidence,
        "input": given,
        "output": "calibrated probabilities (batch, classes), softmax(logits / temperature), in class_names order",
        "trained_image_size": list(c.input_shape[:2]),
    }


ONNX_INPUT_DIMS = ("batch", "height", "width", "channels")  # the names of the ONNX input's free dimensions


def onnx_metadata(model):
    """`metadata` as the ONNX file's string map: a string as it is, anything else (a list, a number) as JSON.

    Read back with `read_onnx_metadata`."""
    return {k: v if isinstance(v, str) else fileio.json_text(v, indent=None).rstrip("\n")
            for k, v in metadata(model).items()}


def read_onnx_metadata(props):
    """The metadata of an ONNX file's string map (onnxruntime's `custom_metadata_map`, or `metadata_props` as a dict):
    the JSON values decoded (lists, numbers, null), the plain strings as they are."""
    out = {}
    for key, value in props.items():
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        out[key] = value if isinstance(decoded, str) else decoded  # a string that looks like JSON text stays text
    return out


def _name_onnx_input(graph):
    """Names the free dimensions of the graph's image input `batch, height, width, channels` (the converter calls
    them unk__NNN) and the output's batch dimension `batch`, so that a runtime shows what each one is."""
    (given,) = [i for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}]
    for dim, name in zip(given.type.tensor_type.shape.dim, ONNX_INPUT_DIMS):
        if not dim.HasField("dim_value"):
            dim.dim_param = name
    for output in graph.graph.output:
        first = output.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_param = ONNX_INPUT_DIMS[0]


def format_of(out, given=None):
    """The export format: `given`, else from the file name (.keras, .onnx, .tflite; a folder is a SavedModel)."""
    if given:
        return given
    suffix = pathlib.Path(out).suffix.lower()
    return {".keras": "keras", ".onnx": "onnx", ".tflite": "litert"}.get(suffix, "savedmodel")


def _input_spec(model, fmt):
    import keras

    if fmt == "litert":  # the LiteRT converter wants static shapes: one image at the trained size
        return [keras.InputSpec(shape=(1, *model.perceiver.config.input_shape), dtype="uint8", name="images")]
    return [keras.InputSpec(shape=(None, None, None, None), dtype="uint8", name="images")]


def check_output(out, fmt):
    """Refuses an export path that exists (never overwritten) or whose folder is missing, before any work."""
    out = pathlib.Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    if os.path.lexists(out):
        raise UsageError(f"{out} already exists; pass a new path (an export never overwrites).")
    folder = out.parent if str(out.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise UsageError(f"the folder of {out} does not exist; create it or pass another path.")
    if fmt == "keras" and out.suffix != ".keras":
        raise UsageError(f"a keras export must end in .keras, not {out.name!r}.")
    if fmt == "onnx" and out.suffix != ".onnx":
        raise UsageError(f"an onnx export must end in .onnx, not {out.name!r}.")
    if fmt == "litert" and out.suffix != ".tflite":
        raise UsageError(f"a litert export must end in .tflite, not {out.name!r}.")


def save_keras(model, path):
    """Saves `model` as a `.keras` file atomically, with its SHA-256 beside it (`<path>.sha256`); replaces `path`.

    train.py writes every run's model.keras this way (and calibration.py again when it refits the temperature)."""
    path = pathlib.Path(path)
    fileio.ensure_space(path, runs.weights_bytes(model))  # its weights are HDF5 too (see fileio.ensure_space)
    tmp = fileio.temporary_name(path)  # keeps the ".keras" ending that Keras requires
    try:
        model.save(tmp)
        runs.replace_with_checksum(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return [str(path), str(runs.checksum_path(path))]


def write_run_model(run_dir, perceiver, classes, temperature, min_confidence):
    """Writes a run's `model.keras` (runs.MODEL_FILE) from its trained Perceiver and calibration, unless the file
    there (its checksum verified) already holds the same configuration, classes, calibration and weights: a `.keras`
    zip records when it was saved, so writing the same model again would change its bytes.

    Returns:
        list[str]: the paths written (none when the file was already this model).
    """
    from perceiver.modules import PerceiverClassifier

    model = PerceiverClassifier.wrap(perceiver, classes, temperature, min_confidence)
    path = pathlib.Path(run_dir) / runs.MODEL_FILE
    if holds_model(path, model):
        return []
    return save_keras(model, path)


def holds_model(path, model):
    """Whether the `.keras` file at `path`, with a checksum that verifies, is `model`: the same class, the same
    configuration (classes and calibration included) and bitwise the same weights. A missing, damaged or unloadable
    file is not."""
    import keras
    import numpy as np

    from perceiver import modules  # noqa: F401  (registers the Perceiver's layers for deserialisation)

    path = pathlib.Path(path)
    try:
        if not path.is_file() or not runs.verify_checksum(path, warn=False):
            return False
        saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception:  # a checksum mismatch, a damaged zip, an unknown layer: written again
        return False
    if type(saved) is not type(model) or saved.get_config() != model.get_config():
        return False
    ours, theirs = model.get_weights(), saved.get_weights()
    return len(ours) == len(theirs) and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ours, theirs))


def export(model, out, fmt=None):
    """Writes `model` (a PerceiverClassifier) to `out` in `fmt` (see the module docstring), atomically.

    Returns:
        list[str]: the paths written.

    Raises:
        UsageError: for a path that exists, a missing folder, a format this backend or install cannot write.
    """
    import keras

    out = pathlib.Path(out)
    fmt = format_of(out, fmt)
    check_output(out, fmt)
    if fmt != "keras" and keras.backend.backend() != "tensorflow":
        raise UsageError(f"exporting {fmt} needs the TensorFlow backend; run with KERAS_BACKEND=tensorflow.")
    if fmt == "onnx":
        try:
            import onnx
            import tf2onnx  # noqa: F401  (Keras converts through it)
        except ImportError:
            raise UsageError("exporting onnx needs the packages tf2onnx and onnx: pip install tf2onnx onnx") from None
    if fmt == "keras":
        return save_keras(model, out)
    written = [out]
    with fileio.atomic(out) as tmp:
        if fmt == "onnx":
            _teach_tf2onnx_erfc()
            with warnings.catch_warnings():  # Keras' own numpy 2 patch of tf2onnx warns about np.object
                warnings.simplefilter("ignore", FutureWarning)
                model.export(tmp, format="onnx", input_signature=_input_spec(model, fmt), verbose=False)
            graph = onnx.load(tmp)
            _name_onnx_input(graph)
            for key, value in onnx_metadata(model).items():
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, tmp)
        else:
            model.export(tmp, format="tf_saved_model" if fmt == "savedmodel" else "litert",
                         input_signature=_input_spec(model, fmt), verbose=False)
            if fmt == "savedmodel":
                (tmp / METADATA).write_text(fileio.json_text(metadata(model)))
    if fmt == "litert":
        sidecar = out.with_name(out.name + ".json")
        runs.atomic_write_json(sidecar, metadata(model, fmt))
        written.append(sidecar)
    return [str(p) for p in written]


_ERFC_TAUGHT = False


def _teach_tf2onnx_erfc():
    """tf2onnx has no converter for TensorFlow's Erfc, which TensorFlow's exact GELU uses (`0.5 x erfc(-x / sqrt 2)`);
    ONNX has Erf (opset 9). This registers `erfc(x) = 1 - erf(x)` once per process. The two agree to float32
    rounding for the arguments a GELU sees (checked by tests/test_classifier.py against Keras)."""
    global _ERFC_TAUGHT
    if _ERFC_TAUGHT:
        return
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841  (registered by the decorator)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            node.type = "Erf"
            ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"),
                                          inputs=[one.output[0], node.output[0]])

    _ERFC_TAUGHT = True
