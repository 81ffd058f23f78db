"""Library versions and settings recorded in every artifact."""

from __future__ import annotations

import importlib.metadata
import platform

import hashee_cli

_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy", "scikit-learn")


def library_versions() -> dict[str, str]:
    """Return the versions of Python, hashee and the libraries that shape results."""
    versions = {"python": platform.python_version(), "hashee": hashee_cli.__version__}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def version_columns() -> dict[str, str]:
    """Return the library versions as flat ``<library>_version`` entries, for one-row-per-run CSV files."""
    return {f"{name.replace('-', '_')}_version": version for name, version in library_versions().items()}
