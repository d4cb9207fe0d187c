"""Print `name==version` for each named distribution installed in this Python, one per line.

scripts/install.sh pins the torch it keeps with this. It reads the installed *distribution's* version
(importlib.metadata), not `torch.__version__`: the PyPI CUDA wheel reports `2.13.0+cu130` at import
time while its distribution is `2.13.0`, and a pin on the former makes pip fail with
ResolutionImpossible. A name that is not installed prints nothing.
"""
from __future__ import annotations

import importlib.metadata
import sys


def pins(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    print("\n".join(pins(sys.argv[1:])))
