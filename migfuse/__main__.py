"""`python -m migfuse`: the same command line as `migfuse`.

Run from a folder that holds another `migfuse/` folder (typically the clone of this repository,
installed in editable mode), Python takes that folder for the package: an empty namespace package
found on the current folder, which hides the installed one (an editable install is found after the
current folder). This file is the installed package's, so it puts its own package back in place
before the command line is imported.
"""
import sys
from pathlib import Path


def _use_this_package() -> None:
    """Replace a namespace package `migfuse` (a folder of that name in the current folder) with the
    package this file belongs to."""
    found = sys.modules.get("migfuse")
    if found is None or getattr(found, "__file__", None):
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    del sys.modules["migfuse"]
    import migfuse  # noqa: F401  (now the package of this file)


_use_this_package()
from migfuse.cli import main  # noqa: E402

main()
