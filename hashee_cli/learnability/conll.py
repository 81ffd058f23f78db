"""Token-level difficulty labels from CoNLL-style files.

Input files have one token per line with its tag in the last whitespace-separated
column (CoNLL-2003 puts POS and chunk tags in between), a blank line between
sentences, and optional ``-DOCSTART-`` lines. A token multi-exit model has a
tag classifier after every layer and trains with the depth-weighted loss of
``MultiExitModel``. Once it is fine-tuned on the training file, every token of
the labelled split gets one 0/1 per layer: 1 where that layer tags it
correctly. A word is tagged at its first sub-token.

Output files repeat the input layout with the vector as a third column:
``token<TAB>tag<TAB>[1, 0, 1]``, one token per line, a blank line between sentences.

NOTE: the probes of ``hashee learnability-probe`` read sentence-level files
only, so token-level labels are written for analysis but not probed yet.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hashee_cli import atomic
from hashee_cli.backbones import load_tokenizer
from hashee_cli.data.encoding import EncodedSplit, collate, evaluation_batches
from hashee_cli.data.reading import Split
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.devices import resolve_device
from hashee_cli.errors import DataError, HasheeError
from hashee_cli.learnability.difficulty import LABELS_CONFIG_FILE, LabelResult, format_vector, probe_split
from hashee_cli.modeling.architectures import Architecture, architecture_for
from hashee_cli.modeling.exit_layers import full_layer
from hashee_cli.modeling.model import load_backbone_for_task
from hashee_cli.provenance import library_versions
from hashee_cli.training import TrainingCallback, seed_everything, train

# Positions without a tag (special tokens, later sub-tokens, padding); cross_entropy skips them.
IGNORE_INDEX = -100


@dataclass
class ConllFile:
    """The sentences of a CoNLL-style file: tokens, tags and the line of every token."""

    path: Path
    tokens: list[list[str]]
    tags: list[list[str]]
    lines: list[list[int]]

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, indices) -> ConllFile:
        return ConllFile(self.path, *([items[i] for i in indices] for items in (self.tokens, self.tags, self.lines)))


def read_conll(path: str | Path) -> ConllFile:
    """Read a CoNLL-style file, naming the line of any row that is not a token and a tag."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"CoNLL file {path} does not exist; check the path")
    tokens, tags, lines = [], [], []
    sentence: tuple[list, list, list] = ([], [], [])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"CoNLL file {path} is not UTF-8 text (byte {error.start}); re-encode it as UTF-8") from error

    for number, line in enumerate(text.splitlines() + [""], start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if sentence[0]:
                for collected, part in zip((tokens, tags, lines), sentence):
                    collected.append(part)
                sentence = ([], [], [])
            continue
        if len(fields) < 2:
            raise DataError(f"{path} line {number}: expected a token and a tag separated by whitespace, got {line.strip()!r}")
        for part, value in zip(sentence, (fields[0], fields[-1], number)):
            part.append(value)
    if not tokens:
        raise DataError(f"CoNLL file {path} has no sentences; write one token and tag per line, a blank line between sentences")
    return ConllFile(path, tokens, tags, lines)


def check_tags(conll: ConllFile, known: tuple[str, ...], train_path: Path) -> None:
    """Raise DataError at the first tag that the training file does not contain."""
    allowed = set(known)
    for sentence_tags, sentence_lines in zip(conll.tags, conll.lines):
        for tag, line in zip(sentence_tags, sentence_lines):
            if tag not in allowed:
                raise DataError(
                    f"{conll.path} line {line}: tag {tag!r} does not occur in the training file {train_path}; "
                    "the model can only predict tags it was trained on"
                )


def encode_conll(
    conll: ConllFile, tag_ids: dict[str, int], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> tuple[EncodedSplit, list[list[int]]]:
    """Tokenise the sentences and place each word's tag id at its first sub-token.

    Returns the encoded split, whose labels are (N, max_seq_length) with
    IGNORE_INDEX where no tag applies, and for every sentence the position of
    each word's first sub-token (-1 when truncation cut the word off).
    """
    encoding = tokenizer(conll.tokens, is_split_into_words=True, truncation=True, max_length=max_seq_length)
    labels = torch.full((len(conll), max_seq_length), IGNORE_INDEX, dtype=torch.long)
    positions = []
    num_truncated = 0
    for index, words in enumerate(conll.tokens):
        first = [-1] * len(words)
        for position, word in enumerate(encoding.word_ids(index)):
            if word is not None and first[word] < 0:
                first[word] = position
                labels[index, position] = tag_ids[conll.tags[index][word]]
        num_truncated += -1 in first
        positions.append(first)

    split = Split(
        name=conll.path.stem,
        source=str(conll.path),
        texts=[[" ".join(words) for words in conll.tokens]],
        labels=None,
        line_numbers=[lines[0] for lines in conll.lines],
    )
    token_type_ids = list(encoding["token_type_ids"]) if "token_type_ids" in encoding else None
    return EncodedSplit(split, list(encoding["input_ids"]), token_type_ids, labels, num_truncated), positions


@dataclass
class TokenMultiExitOutput:
    """Per-layer tag logits of a batch.

    ``all_logits`` is (L, B, T, C). ``logits`` is the last layer's, padded to
    (B, max_seq_length, C) so that batches of different lengths stack.
    """

    logits: torch.Tensor
    all_logits: torch.Tensor
    exit_layers: torch.Tensor
    loss: torch.Tensor | None = None


class TokenMultiExitModel(nn.Module):
    """A tagger with a linear tag classifier after every layer, trained with the depth-weighted loss.

    Only the encoder of ``model`` (a ``*ForSequenceClassification``) runs; its
    sequence head stays unused.
    """

    def __init__(self, model: PreTrainedModel, num_tags: int, max_seq_length: int):
        super().__init__()
        self.model = model
        self.architecture: Architecture = architecture_for(model.config.model_type)
        self.layer_parts = [self.architecture.layer_parts(layer) for layer in self.architecture.layers(model)]
        config = model.config
        hidden_size = getattr(config, "hidden_size", None) or config.dim
        dropout = getattr(config, "hidden_dropout_prob", None) or getattr(config, "dropout", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.tag_heads = nn.ModuleList([nn.Linear(hidden_size, num_tags) for _ in range(self.num_layers)])
        self.max_seq_length = max_seq_length

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.layer_parts)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, **unused) -> TokenMultiExitOutput:
        width = input_ids.shape[1]
        hidden_states = self.architecture.embed(self.model, input_ids, token_type_ids)  # (B, T, D)
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        all_logits = []
        for parts, head in zip(self.layer_parts, self.tag_heads):
            hidden_states = full_layer(parts, hidden_states, key_mask)
            all_logits.append(head(self.dropout(hidden_states)))  # (B, T, C)
        stacked = torch.stack(all_logits)  # (L, B, T, C)

        loss = None
        if labels is not None:
            labels = labels[:, :width]  # (B, T): batches are padded to their longest sentence
            weights = torch.arange(1, self.num_layers + 1, dtype=stacked.dtype, device=stacked.device)
            losses = torch.stack([F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX) for logits in stacked])
            loss = (weights * losses).sum() / weights.sum()

        padded = F.pad(stacked[-1], (0, 0, 0, self.max_seq_length - width))  # (B, max_seq_length, C)
        exit_layers = attention_mask.long() * self.num_layers
        return TokenMultiExitOutput(logits=padded, all_logits=stacked, exit_layers=exit_layers, loss=loss)


def token_layer_correctness(
    model: TokenMultiExitModel, encoded: EncodedSplit, positions: list[list[int]], batch_size: int, pad_token_id: int
) -> list[np.ndarray | None]:
    """Return, per sentence, an int64 matrix (words, L) of correct tags per layer; None where a word was truncated."""
    model.eval()
    device = next(model.parameters()).device
    results: list[np.ndarray | None] = [None] * len(encoded)
    with torch.inference_mode():
        for indices in evaluation_batches(encoded.lengths, batch_size):
            batch = {name: tensor.to(device) for name, tensor in collate(encoded, indices, pad_token_id).items()}
            labels = batch.pop("labels")  # (B, max_seq_length)
            predicted = model(**batch).all_logits.argmax(dim=-1)  # (L, B, T)
            hits = (predicted == labels[None, :, : predicted.shape[2]]).cpu().numpy()  # (L, B, T)
            for row, index in enumerate(indices):
                if -1 in positions[index]:
                    continue
                results[index] = hits[:, row, positions[index]].T.astype(np.int64)  # (words, L)
    return results


def write_token_labels(path: Path, conll: ConllFile, vectors: list[np.ndarray]) -> None:
    """Write token, tag and label vector per line, a blank line between sentences, atomically."""
    with atomic.atomic_file(path) as handle:
        for words, tags, matrix in zip(conll.tokens, conll.tags, vectors):
            for word, tag, vector in zip(words, tags, matrix):
                handle.write(f"{word}\t{tag}\t{format_vector(vector)}\n")
            handle.write("\n")


def _limit(conll: ConllFile, limit: int | None, seed: int) -> ConllFile:
    if limit is None or limit >= len(conll):
        return conll
    return conll.select(np.sort(np.random.default_rng(seed).choice(len(conll), size=limit, replace=False)))


def _split_file(settings, split: str) -> Path:
    path = settings.data.split_file(split)
    if not path:
        raise HasheeError(f"--token-level builds read CoNLL files; pass --{split}-file")
    return Path(path).expanduser()


def build_token_labels(settings, callback: TrainingCallback | None = None) -> LabelResult:
    """Fine-tune a token multi-exit model on CoNLL files and write token-level difficulty labels.

    ``settings`` is a ``LabelSettings`` with ``token_level`` set.
    """
    start = time.perf_counter()
    seed = settings.training.seed
    max_seq_length = settings.data.max_seq_length
    files = {split: _split_file(settings, split) for split in dict.fromkeys(("train", "dev", settings.label_split))}
    conll = {split: read_conll(path) for split, path in files.items()}
    tags = tuple(sorted({tag for sentence in conll["train"].tags for tag in sentence}))
    for split in files:
        check_tags(conll[split], tags, files["train"])
    task = TaskSpec(
        name="token-tagging",
        text_columns=(("tokens",),),
        label_columns=("tag",),
        labels=tags,
        metrics=("token_accuracy",),
        main_metric="token_accuracy",
    )
    chosen = {
        "train": _limit(conll["train"], settings.train_limit, seed),
        "dev": _limit(conll["dev"], settings.dev_limit, seed),
        "label": _limit(conll[settings.label_split], settings.label_limit, seed),
    }

    with atomic.atomic_directory(settings.output_dir, overwrite=settings.overwrite) as staging:
        device = resolve_device(settings.device)
        tokenizer = load_tokenizer(settings.model)
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        tag_ids = {tag: index for index, tag in enumerate(tags)}
        encoded = {split: encode_conll(data, tag_ids, tokenizer, max_seq_length) for split, data in chosen.items()}

        # Seed first: the tag classifiers' weights are drawn when the model is built.
        seed_everything(seed)
        model = TokenMultiExitModel(load_backbone_for_task(settings.model, task), len(tags), max_seq_length).to(device)
        train(model, encoded["train"][0], encoded["dev"][0], task, settings.training, pad_token_id, callback)

        labelled, positions = encoded["label"]
        matrices = token_layer_correctness(model, labelled, positions, settings.training.eval_batch_size, pad_token_id)
        complete = [index for index, matrix in enumerate(matrices) if matrix is not None]
        source = chosen["label"]
        train_rows, test_rows = probe_split(len(complete), settings.test_fraction, seed, str(source.path))
        for name, rows in (("train.conll", train_rows), ("test.conll", test_rows)):
            sentences = [complete[row] for row in rows]
            write_token_labels(staging / name, source.select(sentences), [matrices[index] for index in sentences])

        all_tokens = np.concatenate([matrices[index] for index in complete])  # (tokens, L)
        layer_accuracy = all_tokens.mean(axis=0).tolist()
        config = {
            "command": "build-difficulty-labels",
            "level": "token",
            "task": task.to_dict(),
            "model": settings.model,
            "num_layers": model.num_layers,
            "label_split": settings.label_split,
            "label_source": str(source.path),
            "num_labelled": len(complete),
            "num_dropped_truncated": len(source) - len(complete),
            "files": {"train": "train.conll", "test": "test.conll"},
            "num_train": len(train_rows),
            "num_test": len(test_rows),
            "layer_accuracy": layer_accuracy,
            "settings": asdict(settings),
            "versions": library_versions(),
        }
        atomic.write_text(staging / LABELS_CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")

    return LabelResult(
        Path(settings.output_dir), "token", model.num_layers, len(train_rows), len(test_rows), layer_accuracy,
        num_dropped=len(source) - len(complete), seconds=time.perf_counter() - start,
    )
