"""The synthetic knee MRI generator's command line, as the seed project's layout has it: `perceiver.phantom`.

    python phantom.py data/phantom --patients 40 --sheet docs/phantom_sheet.png   # a synthetic set and its sheet
    python phantom.py OUT --format dicom      # the same scans as DICOM series (or nifti: NIfTI volumes)

`import phantom` gives the package module itself (the same object as `perceiver.phantom`).
"""

import sys

from perceiver import phantom as _package_module

if __name__ == "__main__":
    sys.exit(_package_module.main())
sys.modules[__name__] = _package_module
