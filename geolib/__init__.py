"""geolocal toolkit."""
from __future__ import annotations

from typing import Any

__all__ = ["localize", "explore"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports: `import geolib` stays fast; torch and widgets load on first use.

    The module is `localization`, not `localize`: a submodule of that name would replace this
    function as the package attribute the moment it is imported.
    """
    if name == "localize":
        from .localization import localize
        return localize
    if name == "explore":
        from .explorer import explore
        return explore
    raise AttributeError(f"module 'geolib' has no attribute {name!r}")
