"""The knee-laterality Perceiver as one package: one module per concern. Nothing here imports a top-level file.

    modules      the model: Fourier positions, cross-attention, latent Transformer, the Perceiver, its presets, and
                 PerceiverClassifier (the model with its pre-processing and calibration)
    dataset      the data front door (find, split, decode) over records (AKOA names, discovery, the patient split),
                 images (decoding and the cache) and batches (scaling, augmentation, the batches Keras trains on)
    phantom      the synthetic knee MRI generator (the default data and the benchmark)
    training     train.py's machinery: settings, devices, data, model, the run folder, one fit; recipe, the optimizer
                 and loss
    runs         the run folder's format (load_run rebuilds one); fileio, the durable atomic write and strict JSON
    metrics, calibration, verdicts
                 test metrics; the temperature and calibration scores; one verdict per scan
    finish       the end of a run, one sequence for train.py and the refit: calibration.json, metrics.json,
                 model.keras, the plots, report.html
    inputs, volumes, nifti, canonical
                 what driver.py classifies; the DICOM reader with its header rules; the NIfTI reader; one frame (IPL)
                 for a volume whatever its storage order, and its acquisition plane
    predict      batched inference: Predictor (images in, calibrated probabilities out), classify (a Result an input)
    novelty      how unlike the training images an input is: Mahalanobis, k-nearest-neighbour and energy scores
                 fitted with a threshold (not yet used by driver.py: issue 29)
    classifier   load_model, the one loader (a run folder or a .keras file); the model as one file and its exports
    reports, htmlreport, plots
                 what driver.py prints and writes; the HTML reports; every figure
    errors       what every command shares: UsageError, --version, --verbose, the quiet TensorFlow start-up

The seed project's names stay on top as front doors and command lines: train.py (a door to training), driver.py,
modules.py, dataset.py and phantom.py. The package's own commands run as `python -m perceiver.calibration RUN` (the
refit: finish.py), `python -m perceiver.htmlreport RUN` and `python -m perceiver.plots RUN`; the model is exported by
`driver.py --export OUT`.
"""
