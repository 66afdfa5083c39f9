"""The data front door, as the seed project named it: `perceiver.dataset` (find, split and decode AKOA or class-folder
images; `prepare_data`) and the summary command.

    python dataset.py summary DIR          # images per label, patients, scans, the split, skipped files and why
    python dataset.py summary DIR --json   # the same, as JSON

`import dataset` gives the package module itself (the same object as `perceiver.dataset`).
"""

import sys

from perceiver import dataset as _package_module

if __name__ == "__main__":
    sys.exit(_package_module.main())
sys.modules[__name__] = _package_module
