"""Probe models that learn to predict difficulty, by name.

- ``bow``: logistic regression on bags of words (one vocabulary per text field), scikit-learn;
- ``bilstm``: a bidirectional LSTM over the backbone's frozen input word embeddings, max-pooled;
- ``transformer``: the backbone fine-tuned with a new head.

Each probe trains on one seed's training part and returns predictions for
the test split. The neural probes pick their best epoch on the dev part.
Predictions are 0/1 per example for human-defined difficulty and a 0/1
matrix (N, L) for model-defined difficulty.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from hashee_cli.data.encoding import EncodedSplit, encode_split
from hashee_cli.data.reading import Split
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import predict, predicted_values
from hashee_cli.modeling.model import HashEEModel, HashEEOutput, load_backbone_for_task
from hashee_cli.training import TrainingCallback, TrainingConfig, seed_everything, train


@dataclass
class NeuralSettings:
    """Settings shared by the probes that train with gradient descent."""

    model: str = "minilm-l6"
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    bilstm_learning_rate: float = 1e-3
    bilstm_hidden_size: int = 128
    max_seq_length: int = 128


@dataclass
class ProbeRun:
    """One seed's data and everything a probe needs to train on it."""

    seed: int
    task: TaskSpec
    train: Split
    dev: Split
    test: Split
    settings: NeuralSettings
    device: torch.device
    tokenizer_loader: Callable[[], PreTrainedTokenizerBase]
    callback: TrainingCallback | None = None
    _encoded: dict[str, EncodedSplit] = field(default_factory=dict)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer_loader()

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def encoded(self, split: str) -> EncodedSplit:
        """Return the tokenised train, dev or test split, encoding it on first use."""
        if split not in self._encoded:
            data = {"train": self.train, "dev": self.dev, "test": self.test}[split]
            if not self.is_multi_label:
                # Class labels are encoded from their names, "0" and "1".
                data = dataclasses.replace(data, labels=data.labels.astype(str).astype(object))
            self._encoded[split] = encode_split(data, self.task, self.tokenizer, self.settings.max_seq_length)
        return self._encoded[split]

    @property
    def is_multi_label(self) -> bool:
        return self.task.problem_type == "multi_label"


# Bag of words ---------------------------------------------------------------


def _text_frame(split: Split) -> pd.DataFrame:
    return pd.DataFrame({f"text_{index}": texts for index, texts in enumerate(split.texts)})


def fit_predict_bow(run: ProbeRun) -> np.ndarray:
    """Fit a bag-of-words logistic regression on the training part and predict the test split."""
    # Separate vocabularies per field, so a premise word and a hypothesis word are different features.
    features = ColumnTransformer(
        [(f"words_{index}", CountVectorizer(binary=True), f"text_{index}") for index in range(len(run.train.texts))]
    )
    # On the 8,000 SNLI model-difficulty pairs liblinear fit about 7 times faster than lbfgs, G-mean within 0.001.
    classifier = LogisticRegression(solver="liblinear", random_state=run.seed)
    if run.is_multi_label:
        # One classifier per layer; a layer whose training labels are all equal predicts that value.
        classifier = OneVsRestClassifier(classifier)
    pipeline = make_pipeline(features, classifier)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        pipeline.fit(_text_frame(run.train), run.train.labels)
        return np.asarray(pipeline.predict(_text_frame(run.test)), dtype=np.int64)


# Neural probes ----------------------------------------------------------------


class MultiLabelClassifier(HashEEModel):
    """The full backbone with one logit per label, trained with binary cross-entropy."""

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, **kwargs) -> HashEEOutput:
        output = super().forward(input_ids, attention_mask, token_type_ids, **kwargs)
        if labels is not None:
            output.loss = F.binary_cross_entropy_with_logits(output.logits, labels.to(output.logits.dtype))
        return output


class BiLSTMClassifier(nn.Module):
    """A bidirectional LSTM over frozen word embeddings, max-pooled over tokens, with a linear head."""

    # An LSTM has no transformer layers: every token reports exit layer 0, so
    # the MAC estimate in ``predict`` covers only a head-sized product. The
    # training loop reads neither.
    num_layers = 0

    def __init__(self, word_embeddings: torch.Tensor, hidden_size: int, num_outputs: int, multi_label: bool, dropout: float = 0.1):
        super().__init__()
        self.embeddings = nn.Embedding.from_pretrained(word_embeddings, freeze=True)
        self.lstm = nn.LSTM(word_embeddings.shape[1], hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_outputs)
        self.multi_label = multi_label
        # With no layers, intermediate_size never enters the estimate; the cost model only needs it set.
        self.config = PretrainedConfig(
            hidden_size=2 * hidden_size, intermediate_size=1, num_hidden_layers=0, num_labels=num_outputs
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, **unused) -> HashEEOutput:
        width = input_ids.shape[1]
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()  # (B,)
        embedded = self.embeddings(input_ids)  # (B, T, E)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=width)  # (B, T, 2H)
        padding = ~attention_mask.bool()[:, :, None]  # (B, T, 1)
        pooled = states.masked_fill(padding, float("-inf")).max(dim=1).values  # (B, 2H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)

        loss = None
        if labels is not None:
            if self.multi_label:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return HashEEOutput(logits=logits, exit_layers=torch.zeros_like(attention_mask, dtype=torch.long), loss=loss)


def _train_and_predict(run: ProbeRun, model: nn.Module, learning_rate: float) -> np.ndarray:
    settings = run.settings
    config = TrainingConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        learning_rate=learning_rate,
        seed=run.seed,
    )
    model = model.to(run.device)
    train(model, run.encoded("train"), run.encoded("dev"), run.task, config, run.pad_token_id, run.callback)
    predictions = predict(model, run.encoded("test"), settings.eval_batch_size, run.pad_token_id)
    return np.asarray(predicted_values(run.task, predictions.logits), dtype=np.int64)


def fit_predict_transformer(run: ProbeRun) -> np.ndarray:
    """Fine-tune the backbone with a new head on the training part and predict the test split."""
    # Seed first: the new head's weights are drawn when the backbone loads.
    seed_everything(run.seed)
    backbone = load_backbone_for_task(run.settings.model, run.task)
    model = MultiLabelClassifier(backbone) if run.is_multi_label else HashEEModel(backbone)
    return _train_and_predict(run, model, run.settings.learning_rate)


def fit_predict_bilstm(run: ProbeRun) -> np.ndarray:
    """Train a BiLSTM over the backbone's word embeddings on the training part and predict the test split."""
    seed_everything(run.seed)
    backbone = load_backbone_for_task(run.settings.model, run.task)
    word_embeddings = backbone.get_input_embeddings().weight.detach().clone()  # (V, E)
    del backbone
    model = BiLSTMClassifier(word_embeddings, run.settings.bilstm_hidden_size, run.task.num_labels, run.is_multi_label)
    return _train_and_predict(run, model, run.settings.bilstm_learning_rate)


@dataclass(frozen=True)
class Probe:
    name: str
    description: str
    fit_predict: Callable[[ProbeRun], np.ndarray]
    uses_backbone: bool


PROBES: dict[str, Probe] = {
    probe.name: probe
    for probe in [
        Probe("bow", "bag-of-words logistic regression", fit_predict_bow, uses_backbone=False),
        Probe("bilstm", "BiLSTM over the backbone's word embeddings", fit_predict_bilstm, uses_backbone=True),
        Probe("transformer", "the backbone, fine-tuned", fit_predict_transformer, uses_backbone=True),
    ]
}


def get_probe(name: str) -> Probe:
    """Look up a probe by name, with a suggestion on a typo."""
    if name in PROBES:
        return PROBES[name]
    close = difflib.get_close_matches(name, list(PROBES), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise HasheeError(f"unknown probe {name!r}; {hint}known probes: {', '.join(PROBES)}")
