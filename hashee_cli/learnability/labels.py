"""Build model-defined difficulty labels: which layers of a multi-exit model get each example right.

A multi-exit model (a classifier after every layer, trained jointly) is
fine-tuned on a classification task, or loaded from ``hashee finetune
--method multi-exit``. Every example of one split then gets a vector with one
0/1 per layer, 1 where that layer's classifier predicts the gold label. The
labelled examples are cut into a probe training and test file in the format
of the SNLI model-difficulty data, so ``hashee learnability-probe
--difficulty model --data-dir <output>`` runs on them.

Output directory:
  train.tsv, test.tsv     sentence1[, sentence2], label ("[1, 0, 1, ...]")
  labels_config.json      the task, model, split, layer count and each layer's accuracy
  multi-exit/             the fine-tuned checkpoint (not when --checkpoint is given)
Token-level builds (CoNLL files) write train.conll and test.conll instead;
see ``hashee_cli.learnability.conll``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hashee_cli import atomic
from hashee_cli.checkpoint import load_checkpoint
from hashee_cli.data.encoding import EncodedSplit, collate, encode_split, evaluation_batches
from hashee_cli.data.reading import DataConfig, Split, load_split, subsample
from hashee_cli.data.tasks import SPLITS
from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError
from hashee_cli.finetuning import FinetuneSettings, finetune
from hashee_cli.learnability.conll import build_token_labels
from hashee_cli.learnability.difficulty import LABELS_CONFIG_FILE, LabelResult, probe_split, write_difficulty_file
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.provenance import library_versions
from hashee_cli.training import TrainingCallback, TrainingConfig, seed_everything

CHECKPOINT_FOLDER = "multi-exit"


@dataclass
class LabelSettings:
    """Everything ``hashee build-difficulty-labels`` needs; saved in ``labels_config.json``.

    ``data`` is where the multi-exit model trains and the labelled split comes
    from. With ``checkpoint``, the data settings saved in the checkpoint are
    used instead, with ``data_overrides`` replacing single fields.
    """

    output_dir: str
    model: str = "minilm-l6"
    checkpoint: str | None = None
    label_split: str = "dev"
    label_limit: int | None = None
    test_fraction: float = 0.2
    train_limit: int | None = None
    dev_limit: int | None = None
    token_level: bool = False
    device: str = "auto"
    overwrite: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    data_overrides: dict = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.label_split not in SPLITS:
            raise HasheeError(f"unknown --label-split {self.label_split!r}; use one of {', '.join(SPLITS)}")
        if not 0 < self.test_fraction < 1:
            raise HasheeError(f"--test-fraction must be between 0 and 1 (got {self.test_fraction})")
        if self.label_limit is not None and self.label_limit < 1:
            raise HasheeError(f"--label-limit must be at least 1 (got {self.label_limit})")
        if self.checkpoint and self.token_level:
            raise HasheeError("--checkpoint takes a sentence-level multi-exit checkpoint; drop it for --token-level builds")


def layer_correctness(model: MultiExitModel, encoded: EncodedSplit, batch_size: int, pad_token_id: int) -> np.ndarray:
    """Return an int64 matrix (N, L): 1 where layer l's classifier predicts example n's label."""
    if encoded.labels is None:
        raise HasheeError(f"{encoded.split.source}: the split has no labels; label building needs gold labels")
    model.eval()
    device = next(model.parameters()).device
    correct = np.zeros((len(encoded), model.num_layers), dtype=np.int64)
    with torch.inference_mode():
        for indices in evaluation_batches(encoded.lengths, batch_size):
            batch = {name: tensor.to(device) for name, tensor in collate(encoded, indices, pad_token_id).items()}
            labels = batch.pop("labels")  # (B,)
            all_logits = model(**batch).all_logits  # (L, B, C)
            if all_logits.shape[0] != model.num_layers:
                raise HasheeError(
                    f"the multi-exit model returned logits for {all_logits.shape[0]} of its {model.num_layers} layers; "
                    "label building needs every layer's prediction"
                )
            hits = all_logits.argmax(dim=-1) == labels[None, :]  # (L, B)
            correct[indices] = hits.T.long().cpu().numpy()  # (B, L)
    return correct


def _multi_exit_checkpoint(settings: LabelSettings, staging: Path, callback: TrainingCallback | None):
    """Load the given multi-exit checkpoint, or fine-tune one into the staging directory; return it with its data settings."""
    device = resolve_device(settings.device)
    if settings.checkpoint:
        checkpoint = load_checkpoint(settings.checkpoint, device)
        if checkpoint.method != "multi-exit":
            raise HasheeError(
                f"checkpoint {settings.checkpoint} was trained with --method {checkpoint.method}; label building needs "
                "a multi-exit checkpoint (`hashee finetune --method multi-exit`), or drop --checkpoint to train one"
            )
        data = DataConfig.from_dict({**checkpoint.settings.get("data", {}), **settings.data_overrides})
        return checkpoint, data

    if settings.data.task_spec().problem_type != "classification":
        raise HasheeError(
            f"task {settings.data.task} is a regression task; difficulty labels need a classification task, "
            "where a layer's prediction is either right or wrong"
        )
    # Seed first: the internal classifiers' weights are drawn when the model is built.
    seed_everything(settings.training.seed)
    finetune(
        FinetuneSettings(
            output_dir=str(staging / CHECKPOINT_FOLDER),
            model=settings.model,
            method="multi-exit",
            train_limit=settings.train_limit,
            dev_limit=settings.dev_limit,
            device=settings.device,
            data=settings.data,
            training=settings.training,
        ),
        callback,
    )
    return load_checkpoint(staging / CHECKPOINT_FOLDER, device), settings.data


def _write_config(staging: Path, settings: LabelSettings, details: dict) -> None:
    config = {
        "command": "build-difficulty-labels",
        **details,
        "settings": asdict(settings),
        "versions": library_versions(),
    }
    atomic.write_text(staging / LABELS_CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")


def build_difficulty_labels(settings: LabelSettings, callback: TrainingCallback | None = None) -> LabelResult:
    """Fine-tune (or load) a multi-exit model, record which layers get each example right, and write the label files.

    The output directory appears complete or not at all.
    """
    if settings.token_level:
        return build_token_labels(settings, callback)

    start = time.perf_counter()
    with atomic.atomic_directory(settings.output_dir, overwrite=settings.overwrite) as staging:
        checkpoint, data = _multi_exit_checkpoint(settings, staging, callback)
        task = checkpoint.task
        if task.problem_type != "classification":
            raise HasheeError(f"checkpoint {settings.checkpoint} is for a regression task; difficulty labels need a classification task")

        split: Split = subsample(load_split(data, task, settings.label_split), settings.label_limit, settings.training.seed)
        encoded = encode_split(split, task, checkpoint.tokenizer, data.max_seq_length)
        pad_token_id = checkpoint.tokenizer.pad_token_id or 0
        correct = layer_correctness(checkpoint.model, encoded, settings.training.eval_batch_size, pad_token_id)

        train_rows, test_rows = probe_split(len(split), settings.test_fraction, settings.training.seed, split.source)
        for name, rows in (("train.tsv", train_rows), ("test.tsv", test_rows)):
            texts = [[field[row] for row in rows] for field in split.texts]
            write_difficulty_file(staging / name, texts, correct[rows])

        layer_accuracy = correct.mean(axis=0).tolist()
        _write_config(
            staging,
            settings,
            {
                "level": "sentence",
                "task": task.to_dict(),
                "model": checkpoint.settings.get("model", settings.model),
                "checkpoint": settings.checkpoint or CHECKPOINT_FOLDER,
                "num_layers": checkpoint.model.num_layers,
                "label_split": settings.label_split,
                "label_source": split.source,
                "num_labelled": len(split),
                "num_truncated": encoded.num_truncated,
                "files": {"train": "train.tsv", "test": "test.tsv"},
                "num_train": len(train_rows),
                "num_test": len(test_rows),
                "layer_accuracy": layer_accuracy,
            },
        )
    return LabelResult(
        Path(settings.output_dir), "sentence", checkpoint.model.num_layers, len(train_rows), len(test_rows),
        layer_accuracy, seconds=time.perf_counter() - start,
    )
