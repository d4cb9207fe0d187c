"""Import every migfuse module with this Python: a call that this interpreter lacks at import time (or a
syntax it cannot parse) fails here, on the oldest supported Python too (scripts/floor_check.sh).

    python scripts/import_modules.py

A module whose optional dependency (an extra such as torch) is not installed is listed as skipped; any
other failure is printed with its module and ends in exit status 1. `__main__` modules are not
imported: importing `migfuse.__main__` runs the CLI.
"""
from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: Path = ROOT / "migfuse") -> list[str]:
    """Dotted names of the package's modules, from its files: nothing is imported to find them."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def main() -> int:
    sys.path.insert(0, str(ROOT))
    imported, skipped, failed = [], {}, {}
    for name in module_names():
        try:
            importlib.import_module(name)
            imported.append(name)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            # A skip only when the missing distribution is really absent (an extra not installed here);
            # a missing submodule of an installed package, or of migfuse itself, is an error.
            if top and top != "migfuse" and importlib.util.find_spec(top) is None:
                skipped.setdefault(top, []).append(name)
            else:
                failed[name] = traceback.format_exc()
        except Exception:  # noqa: BLE001 - any import-time failure is what this script reports
            failed[name] = traceback.format_exc()
    total = len(imported) + sum(map(len, skipped.values())) + len(failed)
    n_skipped = sum(map(len, skipped.values()))
    print(f"import_modules: Python {platform.python_version()} ({sys.executable}): {len(imported)} of {total} "
          f"migfuse modules imported, {n_skipped} skipped (an extra not installed), {len(failed)} failed")
    for top, names in sorted(skipped.items()):
        print(f"  skipped, need {top}: {', '.join(names)}")
    for name, tb in failed.items():
        print(f"  FAILED {name}:\n{tb}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
