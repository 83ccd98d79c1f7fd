"""The version of udm (a leaf module, so checkpoints can record it without importing the package face)."""

__version__ = "0.1.0"
