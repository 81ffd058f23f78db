"""Count the cost of the real forward pass per example with fvcore, next to the analytic cost model.

fvcore's FlopCountAnalysis traces a forward pass with ``torch.jit`` and
counts every operator of the trace with a handler. It counts one fused
multiply-add as one "flop", so its figures are MACs, the unit of
``hashee_cli.flops``; FLOPs (a multiply and an add counted apart) are twice
as many.

fvcore 0.1.5 has no handler for ``aten::scaled_dot_product_attention`` and
leaves any operator without a handler out of its total, so the attention
products would go missing. Every operator of the forward passes here is
therefore registered:

- matrix products: fvcore's handlers for linear, matmul, mm, bmm, addmm,
  einsum and convolution, and ``attention_flop_jit`` for the attention
  products (Q K^T and the weighted sum of values, over all heads);
- element-wise work, normalisation, softmax, embedding lookups, hashing,
  gathers and scatters: no cost, because the analytic model counts matrix
  products only (fvcore would otherwise add 5 flops per LayerNorm element).

Any other operator is left uncounted and reported in ``uncounted_ops``.

A method plugs in as a ``CountingTarget``: a forward callable on a batch and
the analytic cost of what it ran. ``count_split`` traces that callable on one
example at a time, without padding, because HashEE's cost depends on the
input, and returns the per-example counts of the whole split.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn import jit_handles
from torch import nn
from transformers import PretrainedConfig

from hashee_cli.data.encoding import EncodedSplit, collate, evaluation_batches
from hashee_cli.errors import HasheeError
from hashee_cli.flops import EncoderDims, embedding_macs, example_layer_macs, full_model_macs, head_macs
from hashee_cli.modeling.model import Form, HashEEModel
from hashee_cli.modeling.multi_exit import MultiExitModel

Batch = dict[str, torch.Tensor]


def attention_flop_jit(inputs: list, outputs: list) -> int:
    """Return the MACs of ``scaled_dot_product_attention``: Q K^T and the weighted sum of values.

    Shapes are query (..., Tq, E), key (..., Tk, E) and value (..., Tk, Ev),
    where the leading dimensions are batch and heads.
    """
    query, key, value = (jit_handles.get_shape(tensor) for tensor in inputs[:3])
    *leading, num_queries, head_dim = query
    num_keys = key[-2]
    value_dim = value[-1]
    return math.prod(leading) * num_queries * num_keys * (head_dim + value_dim)


MATRIX_PRODUCT_HANDLES = {
    "aten::linear": jit_handles.linear_flop_jit,
    "aten::matmul": jit_handles.matmul_flop_jit,
    "aten::mm": jit_handles.matmul_flop_jit,
    "aten::bmm": jit_handles.bmm_flop_jit,
    "aten::addmm": jit_handles.addmm_flop_jit,
    "aten::einsum": jit_handles.einsum_flop_jit,
    "aten::_convolution": jit_handles.conv_flop_jit,
    "aten::scaled_dot_product_attention": attention_flop_jit,
}

# Operators of the forward passes that are no matrix product. fvcore already
# skips shape operators, prim:: nodes and a few others (its _IGNORED_OPS).
ZERO_COST_OPS = (
    # element-wise arithmetic, activations and normalisation
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div",
    "aten::remainder", "aten::gelu", "aten::relu", "aten::tanh", "aten::softmax", "aten::layer_norm",
    "aten::where", "aten::masked_fill", "aten::isin", "aten::lt", "aten::le", "aten::ne",
    # reductions and index arithmetic of the exit plan
    "aten::sum", "aten::cumsum", "aten::amax", "aten::nonzero", "aten::stack", "aten::split_with_sizes",
    "aten::unbind", "aten::new_zeros", "aten::zeros", "aten::zeros_like", "aten::ones", "aten::expand_as", "aten::numel",
    # embedding lookups, gathers and scatters
    "aten::embedding", "aten::index_select", "aten::index_copy", "aten::index_copy_", "aten::type_as",
)


@dataclass
class CountingTarget:
    """A method's forward pass and the analytic cost of what it ran, for ``count_split``.

    ``forward`` maps a batch (``input_ids``, ``attention_mask`` and
    ``token_type_ids`` when the tokenizer makes them) to logits and exit
    layers. ``count_split`` traces it on one example at a time.
    ``analytic_layers`` and ``analytic_other`` map those exit layers to the
    analytic MACs of each layer (B, L) and of the rest, embeddings and heads (B,).
    Layer l's counted cost is the work that runs inside calls of the modules
    in ``layer_modules[l - 1]``, which must be disjoint subtrees of ``model``.
    Everything else counts as "other".
    """

    model: nn.Module
    forward: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    analytic_layers: Callable[[torch.Tensor], torch.Tensor]
    analytic_other: Callable[[torch.Tensor], torch.Tensor]
    layer_modules: list[list[nn.Module]]
    form: str

    @property
    def num_layers(self) -> int:
        return len(self.layer_modules)


def model_target(model: HashEEModel | MultiExitModel, form: Form = "auto") -> CountingTarget:
    """Return the counting target of a HashEE (or full) model or a multi-exit model, as ``evaluate`` runs it.

    ``auto`` resolves as in eval mode: the gathered form with a hash table,
    the dense form without one. The analytic cost is that of the form that
    runs, so the masked form costs as much as the full model. A multi-exit
    model always runs densely and also pays for the internal classifiers of
    layers 1..L-1.
    """
    dims = EncoderDims.from_config(model.config)
    num_classifiers = 1 + len(getattr(model, "exit_heads", []))
    resolved = model.resolve_form(form, training=False) if isinstance(model, HashEEModel) else "dense"
    # The dense and masked forms run every layer on every token, whatever the exit layers are.
    computes_every_token = resolved != "gathered"

    def forward(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        output = model(**batch, form=resolved)
        return output.logits, output.exit_layers

    def analytic_layers(exit_layers: torch.Tensor) -> torch.Tensor:
        if computes_every_token:
            exit_layers = (exit_layers > 0) * dims.num_layers  # (B, T)
        return example_layer_macs(dims, exit_layers)  # (B, L)

    def analytic_other(exit_layers: torch.Tensor) -> torch.Tensor:
        num_tokens = (exit_layers > 0).sum(dim=1).to(torch.float64)  # (B,)
        return embedding_macs(dims, num_tokens) + num_classifiers * head_macs(dims)

    backbone_layers = model.architecture.layers(model.model)
    layer_modules = [[exit_layer, backbone_layer] for exit_layer, backbone_layer in zip(model.layers, backbone_layers)]
    return CountingTarget(model, forward, analytic_layers, analytic_other, layer_modules, resolved)


@dataclass
class FlopCounts:
    """Per-example costs of a split in MACs, counted by fvcore and from the analytic model.

    ``counted`` and ``analytic`` are (N,), ``counted_layers`` and
    ``analytic_layers`` (N, L); the rest of each total is embeddings and
    heads. ``full_model`` is the analytic cost of the plain classifier on the
    same examples. ``uncounted_ops`` maps each operator without a handler to
    the number of examples whose trace contains it. ``by_operator`` sums the
    counted MACs of each operator over the split.
    """

    num_tokens: np.ndarray
    counted: np.ndarray
    counted_layers: np.ndarray
    analytic: np.ndarray
    analytic_layers: np.ndarray
    full_model: np.ndarray
    uncounted_ops: Counter
    by_operator: Counter

    @property
    def num_examples(self) -> int:
        return len(self.counted)

    @property
    def counted_other(self) -> np.ndarray:
        return self.counted - self.counted_layers.sum(axis=1)

    @property
    def analytic_other(self) -> np.ndarray:
        return self.analytic - self.analytic_layers.sum(axis=1)


def max_positions(config: PretrainedConfig) -> int | None:
    """Return the longest sequence the model's position embeddings cover, or None without a limit."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa numbers positions from padding_idx + 1, so the first rows of the table are never used.
        positions -= (config.pad_token_id or 0) + 1
    return positions


def check_lengths(config: PretrainedConfig, encoded: EncodedSplit) -> None:
    """Raise HasheeError naming the first example that is longer than the model's positions."""
    limit = max_positions(config)
    if limit is None:
        return
    for index, length in enumerate(encoded.lengths):
        if length > limit:
            raise HasheeError(
                f"{encoded.split.where(index)}: the example has {length} tokens but the model has "
                f"{limit} positions; set --max-seq-length to {limit} or less"
            )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode (no dropout) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread and restore the thread count afterwards.

    A trace of one example runs hundreds of small operators, for which
    thread synchronisation costs more than it saves: on a loaded 2-core
    machine two threads made counting about five times slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _TracedForward(nn.Module):
    """Present a counting target's forward to fvcore as a module whose only child is the model.

    fvcore traces modules, not callables, and names scopes after the
    submodules, so the model must be a child for per-layer counts.
    """

    def __init__(self, target: CountingTarget):
        super().__init__()
        self.model = target.model
        self.target_forward = target.forward
        self.input_names: list[str] = []

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.target_forward(dict(zip(self.input_names, tensors)))


def _analysis(traced: _TracedForward, example: Batch) -> FlopCountAnalysis:
    traced.input_names = list(example)
    analysis = FlopCountAnalysis(traced, tuple(example.values()))
    analysis.clear_op_handles()
    analysis.set_op_handle(**MATRIX_PRODUCT_HANDLES)
    analysis.set_op_handle(**dict.fromkeys(ZERO_COST_OPS))
    # Uncounted operators are collected and reported, so fvcore's own warnings would only repeat them.
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def _model_inputs(batch: Batch, device: torch.device) -> Batch:
    return {name: tensor.to(device) for name, tensor in batch.items() if name != "labels"}


def count_split(
    target: CountingTarget,
    encoded: EncodedSplit,
    pad_token_id: int,
    batch_size: int = 64,
    on_example: Callable[[int], None] | None = None,
) -> FlopCounts:
    """Count the MACs of every example of ``encoded`` with fvcore and with the analytic model.

    The analytic figures come from the exit layers of a batched forward pass
    (length-sorted batches of ``batch_size``, as in ``evaluate``). fvcore
    traces the forward on each example alone, in eval mode and without
    gradients, so the counts do not depend on the model's mode or on
    ``requires_grad``. The model's mode is restored afterwards.
    ``on_example`` is called with the number of examples counted so far.
    """
    if len(encoded) == 0:
        raise HasheeError(f"{encoded.split.source} has no examples to count; check the split and --limit")
    model = target.model
    check_lengths(model.config, encoded)
    batches = evaluation_batches(encoded.lengths, batch_size)
    device = next(model.parameters()).device
    num_examples, num_layers = len(encoded), target.num_layers
    dims = EncoderDims.from_config(model.config)

    analytic_layers = np.zeros((num_examples, num_layers))
    analytic_other = np.zeros(num_examples)
    counted = np.zeros(num_examples)
    counted_layers = np.zeros((num_examples, num_layers))
    uncounted: Counter = Counter()
    by_operator: Counter = Counter()

    with _eval_mode(model), _one_thread():
        with torch.inference_mode():
            for indices in batches:
                batch = _model_inputs(collate(encoded, indices, pad_token_id), device)
                _, exit_layers = target.forward(batch)
                analytic_layers[indices] = target.analytic_layers(exit_layers).cpu().numpy()
                analytic_other[indices] = target.analytic_other(exit_layers).cpu().numpy()

        traced = _TracedForward(target)
        module_names = {module: name for name, module in traced.named_modules()}
        layer_scopes = [[module_names[module] for module in modules] for modules in target.layer_modules]
        with torch.no_grad():
            for index in range(num_examples):
                analysis = _analysis(traced, _model_inputs(collate(encoded, [index], pad_token_id), device))
                counted[index] = analysis.total()
                per_module = analysis.by_module()
                counted_layers[index] = [sum(per_module[name] for name in scopes) for scopes in layer_scopes]
                by_operator.update(analysis.by_operator())
                uncounted.update(analysis.unsupported_ops().keys())
                if on_example is not None:
                    on_example(index + 1)

    lengths = np.asarray(encoded.lengths)
    full_model = np.asarray([full_model_macs(dims, int(length)) for length in lengths], dtype=np.float64)
    return FlopCounts(
        num_tokens=lengths,
        counted=counted,
        counted_layers=counted_layers,
        analytic=analytic_layers.sum(axis=1) + analytic_other,
        analytic_layers=analytic_layers,
        full_model=full_model,
        uncounted_ops=uncounted,
        by_operator=by_operator,
    )
