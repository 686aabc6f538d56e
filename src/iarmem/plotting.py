"""matplotlib's pyplot on the file-only Agg backend, imported when a figure is drawn.

Importing pyplot costs about half a second; the modules that draw are imported by most commands (and by
`iarmem --help` before the CLI imported lazily), so they call :func:`pyplot` inside their drawing functions.
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` with the Agg backend selected (no display needed, PNG and SVG only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
