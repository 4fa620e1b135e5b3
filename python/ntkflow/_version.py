"""The package version, in a module of its own so that a submodule (the store's manifest)
can read it without importing the package that imports that submodule."""

__version__ = "0.1.0"
