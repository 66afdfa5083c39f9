"""What several test files build the same way: a small run folder with random weights, a DICOM file with some
header elements changed. Imported by the tests as `helpers` (pytest puts tests/ on sys.path)."""

import pydicom


def tiny_run(tmp, *, seed=0):
    """A run folder of the `tiny` preset (16 x 16 inputs) with random weights (keras seed `seed`) on an 8-patient
    phantom set in `tmp`/data, as train.py writes one: config.json, split.csv, model.weights.h5. Returns the folder."""
    import keras

    from perceiver import dataset, phantom, runs
    from perceiver.modules import PerceiverConfig, build_model

    data = tmp / "data"
    phantom.generate(data, patients=8, slices=4, height=64, width=72, progress=False)
    found = dataset.discover(data)
    split = dataset.split_by_patient(found.records, seed=0)
    keras.utils.set_random_seed(seed)
    config = PerceiverConfig.preset("tiny", input_shape=(16, 16, 3), num_classes=2)
    run = tmp / "run"
    run.mkdir()
    runs.write_config(run, {
        "train": {"preset": "tiny"}, "model": config.to_dict(),
        "data": {"root": str(data), "layout": "akoa", "classes": ["left", "right"], "image_size": [16, 16],
                 "channels": 3}})
    dataset.write_manifest(run / runs.SPLIT, found.records, split, root=data)
    runs.atomic_save_weights(build_model(config), run / runs.BEST_WEIGHTS)
    return run


def edit_dicom(path, out, **changes):
    """A copy of the DICOM file `path` at `out` with each keyword set to its value (None: the element removed)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(out)
    return out
