"""Exit rules of sentence-level early exiting: when an example may leave after an internal classifier.

A rule looks at one layer's logits for a batch and returns which examples
exit there. Rules with memory (patience) carry a state from layer to layer.
The same ``step`` runs in the real early-exit forward, where exited examples
leave the batch, and in the replay over recorded logits, so both make the
same decisions.

Rules, by registry name:
  entropy   exit at the first layer whose softmax entropy over the classes
            (in nats) is below the threshold; DeeBERT's rule
  patience  exit once the prediction has stayed the same for ``patience``
            consecutive layers; for regression "the same" means a change
            below ``tolerance``; PABEE's rule
The last layer always takes every example that is left.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hashee_cli.errors import HasheeError

EXIT_RULES = ("entropy", "patience")
DEFAULT_TOLERANCE = 0.1


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Return the softmax entropy over the class axis in nats: logits (B, C) -> (B,)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


@dataclass(frozen=True)
class EntropyRule:
    """Exit where the prediction's entropy is below ``threshold`` (nats, in [0, ln C])."""

    threshold: float
    num_labels: int

    name = "entropy"

    def __post_init__(self) -> None:
        if self.num_labels < 2:
            raise HasheeError(
                "the entropy exit rule needs a classification task; for regression use the patience rule (pabee)"
            )
        limit = math.log(self.num_labels)
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise HasheeError(
                f"entropy threshold {self.threshold} is invalid; give thresholds in [0, {limit:.4f}] "
                f"(nats; ln {self.num_labels} is the entropy of a uniform prediction)"
            )
        if self.threshold > limit + 1e-9:
            raise HasheeError(
                f"entropy threshold {self.threshold} is above ln {self.num_labels} = {limit:.4f}, the largest entropy "
                f"of {self.num_labels} classes; give thresholds in [0, {limit:.4f}]"
            )

    @property
    def setting(self) -> str:
        return f"threshold={self.threshold:g}"

    @property
    def columns(self) -> dict:
        return {"exit_rule": self.name, "threshold": self.threshold}

    def start(self, batch_size: int, device: torch.device) -> None:
        return None

    def step(self, state: None, logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return (B,) booleans, True where the example exits after this layer."""
        return entropy(logits) < self.threshold, None

    def keep(self, state: None, rows: torch.Tensor) -> None:
        return None


@dataclass
class PatienceState:
    """Per-example memory of the patience rule: the last prediction (B,) and how many layers agreed with it (B,)."""

    previous: torch.Tensor | None
    agreements: torch.Tensor


@dataclass(frozen=True)
class PatienceRule:
    """Exit once ``patience`` consecutive layers repeat the previous layer's prediction.

    Classification compares class ids; regression treats a change below
    ``tolerance`` as unchanged. With L layers at most L-1 agreements can
    happen, so ``patience`` must be in 1..L-1.
    """

    patience: int
    num_layers: int
    regression: bool = False
    tolerance: float = DEFAULT_TOLERANCE

    name = "patience"

    def __post_init__(self) -> None:
        if isinstance(self.patience, float) and not self.patience.is_integer():
            raise HasheeError(f"patience must be a whole number of layers, not {self.patience}")
        if self.patience < 1:
            raise HasheeError(
                f"patience {self.patience} is invalid; it counts the layers that must agree before an exit, "
                f"so give whole numbers in 1..{self.num_layers - 1}"
            )
        if self.patience > self.num_layers - 1:
            raise HasheeError(
                f"patience {self.patience} can never be reached with {self.num_layers} layers "
                f"(at most {self.num_layers - 1} agreements); give whole numbers in 1..{self.num_layers - 1}"
            )
        if self.regression and (not math.isfinite(self.tolerance) or self.tolerance <= 0):
            raise HasheeError(f"--tolerance must be a positive number (got {self.tolerance})")

    @property
    def setting(self) -> str:
        return f"patience={self.patience}" + (f",tolerance={self.tolerance:g}" if self.regression else "")

    @property
    def columns(self) -> dict:
        columns = {"exit_rule": self.name, "patience": self.patience}
        if self.regression:
            columns["tolerance"] = self.tolerance
        return columns

    def start(self, batch_size: int, device: torch.device) -> PatienceState:
        return PatienceState(None, torch.zeros(batch_size, dtype=torch.long, device=device))

    def step(self, state: PatienceState, logits: torch.Tensor) -> tuple[torch.Tensor, PatienceState]:
        prediction = logits.float() if self.regression else logits.argmax(dim=-1)  # (B,)
        if state.previous is None:
            agreements = state.agreements
        else:
            if self.regression:
                unchanged = (prediction - state.previous).abs() < self.tolerance
            else:
                unchanged = prediction == state.previous
            agreements = torch.where(unchanged, state.agreements + 1, torch.zeros_like(state.agreements))
        return agreements >= self.patience, PatienceState(prediction, agreements)

    def keep(self, state: PatienceState, rows: torch.Tensor) -> PatienceState:
        previous = None if state.previous is None else state.previous.index_select(0, rows)
        return PatienceState(previous, state.agreements.index_select(0, rows))


ExitRule = EntropyRule | PatienceRule


def check_rule_name(name: str) -> str:
    """Return ``name`` if it is a registered exit rule, else raise with a suggestion."""
    if name in EXIT_RULES:
        return name
    close = difflib.get_close_matches(name, EXIT_RULES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise HasheeError(f"unknown exit rule {name!r}; {hint}known rules: {', '.join(EXIT_RULES)}")


def default_thresholds(num_labels: int) -> list[float]:
    """Return the default entropy sweep: 0 to ln C, denser near 0 where confident models sit."""
    limit = math.log(num_labels)
    fractions = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    return [round(limit * fraction, 6) for fraction in fractions]


def build_rules(
    name: str,
    num_layers: int,
    num_labels: int,
    regression: bool,
    thresholds: list[float] | None = None,
    patience: list[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[ExitRule]:
    """Return one rule per sweep setting, checking every value before any work starts.

    ``num_labels`` is the number of classes (1 for regression). Without
    settings the defaults are the thresholds of ``default_thresholds`` or
    patience 1..L-1.
    """
    check_rule_name(name)
    if name == "entropy":
        if patience:
            raise HasheeError("--patience applies to the patience rule; the entropy rule takes --thresholds")
        if regression:
            raise HasheeError(
                "the entropy exit rule needs class probabilities, but this model does regression; use --exit-rule patience"
            )
        values = thresholds if thresholds else default_thresholds(num_labels)
        return [EntropyRule(float(value), num_labels) for value in values]

    if thresholds:
        raise HasheeError("--thresholds applies to the entropy rule; the patience rule takes --patience")
    values = patience if patience else list(range(1, num_layers))
    return [PatienceRule(value, num_layers, regression, tolerance) for value in values]
