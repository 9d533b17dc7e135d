"""meshlib's version (also ``meshlib.__version__``), importable without the package's API."""

__version__ = "0.1.0"
