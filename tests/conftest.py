"""Shared fixtures: the real data beside the checkout, the packaged backbone, and tiny models."""

from __future__ import annotations

import os

# Hub lookups must fail at once in tests instead of retrying for half a minute;
# set before transformers and huggingface_hub read their settings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer
from typer.testing import CliRunner
from transformers.utils import logging as transformers_logging

from hashee_cli.backbones import resolve_model_source
from hashee_cli.cli import app

transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def elue_dir(shared_data: Path) -> Path:
    return shared_data / "elue"


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))


# A wide initialiser makes each layer change the states visibly, so exit tests can fail.
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
TINY_INIT = 0.2


def _tiny_config(model_type: str, vocab_size: int, **overrides):
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    sizes = {**TINY_SIZES, **overrides}
    if model_type == "bert":
        return BertConfig(vocab_size=vocab_size, **sizes)
    if model_type == "roberta":
        # The BERT tokenizer pads with id 0, so RoBERTa's padding index must match it.
        return RobertaConfig(vocab_size=vocab_size, pad_token_id=0, **sizes)
    if model_type == "electra":
        return ElectraConfig(vocab_size=vocab_size, embedding_size=16, **sizes)
    if model_type == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size,
            dim=sizes["hidden_size"],
            n_layers=sizes["num_hidden_layers"],
            n_heads=sizes["num_attention_heads"],
            hidden_dim=sizes["intermediate_size"],
            max_position_embeddings=sizes["max_position_embeddings"],
        )
    raise ValueError(model_type)


def tiny_config(model_type: str, vocab_size: int, **overrides):
    """Return a small randomly initialised config of ``model_type`` (hidden 32, 4 layers)."""
    config = _tiny_config(model_type, vocab_size, **overrides)
    config.initializer_range = TINY_INIT
    return config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer):
    """Return a function that saves a tiny pretrained-style model directory of a given type."""
    from transformers import AutoModel

    cache: dict[str, Path] = {}

    def make(model_type: str = "bert") -> Path:
        if model_type not in cache:
            torch.manual_seed(0)
            directory = tmp_path_factory.mktemp(f"tiny-{model_type}")
            model = AutoModel.from_config(tiny_config(model_type, len(minilm_tokenizer)))
            model.save_pretrained(directory)
            minilm_tokenizer.save_pretrained(directory)
            cache[model_type] = directory
        return cache[model_type]

    return make


def write_tsv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    """Write a small TSV file for bad-input tests."""
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    text = "\n".join(lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def invoke(*args):
    """Run the hashee app in-process with the given arguments (paths and numbers are turned into strings)."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def error_line(result) -> str:
    """Return the last non-empty line of a command's output, where a failing command prints its error."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines, "expected an error message"
    return lines[-1]


@pytest.fixture(scope="session")
def tiny_bert(tiny_model_dir):
    return tiny_model_dir("bert")
