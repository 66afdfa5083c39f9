"""Prints pip constraints that pin every package of requirements*.txt to its declared lower bound (`name>=X` -> `name==X`).

CI installs the project against them (`.ci/run`, "floor versions"), so the floors that requirements.txt declares are
the versions the tests ran on, not a guess. Lines without a lower bound are left out; environment markers are kept.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def floors(paths):
    pins = {}
    for path in paths:
        for line in pathlib.Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$", line)
            if not line or line.startswith("-") or not m:
                continue
            low = re.search(r">=\s*([0-9][^,\s]*)", m.group(3))
            if low:
                pins[(m.group(1).lower(), m.group(4) or "")] = f"{m.group(1)}=={low.group(1)}{m.group(4) or ''}"
    return list(pins.values())


if __name__ == "__main__":
    names = sys.argv[1:] or [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
    print("\n".join(floors(names)))
