"""Optional peers, imported on demand: a missing one is reported "skipped (not
installed)", never an error. JAX runs in float64 (jax_enable_x64), like everything here."""

from __future__ import annotations

import importlib
from typing import Any

_cache: dict[str, Any] = {}


def load(name: str, allowed: frozenset[str]) -> tuple[Any, str | None]:
    """(module, None) or (None, reason). ``name`` in jax, diffrax, torch, scipy."""
    if name not in allowed:
        return None, "skipped (excluded by --peers)"
    if name in _cache:
        return _cache[name]
    try:
        if name in ("jax", "diffrax"):
            jax = importlib.import_module("jax")
            jax.config.update("jax_enable_x64", True)
            mod = jax if name == "jax" else importlib.import_module("diffrax")
        else:
            mod = importlib.import_module(name)
        out: tuple[Any, str | None] = (mod, None)
    except ImportError as exc:
        out = (None, f"skipped (not installed: {exc.name or name})")
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
        out = (None, f"skipped (import failed: {type(exc).__name__}: {exc})")
    _cache[name] = out
    return out


def version(dist: str) -> str | None:
    """Installed version from the package metadata, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
