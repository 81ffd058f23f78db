"""Count the MACs of real greedy generation with fvcore, one traced forward per decoding step.

fvcore's FlopCountAnalysis traces a module once with torch.jit and counts
the matrix products it ran, one fused multiply-add as one "flop", so its
figures are MACs, the unit of ``hashee_cli.flops``. The HashEE forward
depends on the data (which tokens are active), so every call is traced on
the real inputs: the encoder once, then each cached decoding step, for one
example at a time, exactly as ``generate`` runs them. Beyond fvcore's
defaults (linear layers, matrix products, LayerNorm at 5 per element) the
fused attention kernel is counted as its two products, Q K^T and the
weighted sum of values. Embedding lookups and element-wise work (softmax,
activations, T5's RMS norm) are not counted.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from math import prod

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    bmm_flop_jit,
    einsum_flop_jit,
    get_shape,
    linear_flop_jit,
    matmul_flop_jit,
    norm_flop_counter,
)
from torch import nn

from hashee_cli.flop_counting import ZERO_COST_OPS
from hashee_cli.seq2seq.generation import DecoderStepper, GenerationSettings, _logits_processors
from hashee_cli.seq2seq.model import HashEESeq2SeqModel


def _attention_macs(inputs, outputs) -> int:
    # aten::scaled_dot_product_attention(query (..., Tq, Dh), key (..., Tk, Dh), value, ...)
    query, key = get_shape(inputs[0]), get_shape(inputs[1])
    return 2 * prod(query[:-1]) * key[-2] * query[-1]


class _Call(nn.Module):
    """A module whose forward runs ``function`` on tensors and keeps its full result for the caller.

    ``function`` returns (tensors, result). The tracer records the tensors,
    and the caller reads ``self.result`` after the traced call.
    """

    def __init__(self, model: nn.Module, function):
        super().__init__()
        self.model = model  # registered so that fvcore names the modules it traces
        self.function = function
        self.result = None

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, self.result = self.function(*tensors)
        return outputs


# fvcore's default handles for matrix products, and the fused attention kernel as its two products.
_MATRIX_HANDLES = {
    "aten::addmm": addmm_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::scaled_dot_product_attention": _attention_macs,
}


def _count(module: _Call, inputs: tuple[torch.Tensor, ...], include_norms: bool, uncounted: Counter) -> int:
    analysis = FlopCountAnalysis(module, inputs)
    # NOTE: in fvcore 0.1.5, set_op_handle(name, None) marks an op as ignored but keeps counting it
    # when a default handle exists, so the handles are replaced as a whole.
    handles = dict(_MATRIX_HANDLES)
    if include_norms:
        handles["aten::layer_norm"] = norm_flop_counter(2)
    analysis.clear_op_handles().set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(analysis.total())
    # Element-wise work is free in the analytic model too, so only other operators left out are reported.
    uncounted.update(op for op in analysis.unsupported_ops() if op not in ZERO_COST_OPS)
    return total


@dataclass
class FvcoreCount:
    """fvcore MACs of one example: the encoder's, and the decoder's summed over steps (head included)."""

    encoder_macs: int
    decoder_macs: int
    generated_tokens: int
    sequence: torch.Tensor
    uncounted_ops: Counter = field(default_factory=Counter)


def count_generation_macs(
    model: HashEESeq2SeqModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    include_norms: bool = True,
) -> FvcoreCount:
    """Greedily decode one example, input_ids (1, S), tracing every forward, and return fvcore's MAC counts.

    The tokens are those of ``generate`` with the same settings (greedy
    only). ``include_norms=False`` leaves LayerNorm out, so that the count
    covers what the analytic model covers.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("count_generation_macs counts one example at a time; pass input_ids of shape (1, S)")
    model.eval()
    processors = _logits_processors(model, settings)
    # Tracing a data-dependent forward warns that the trace may not generalise; each trace is used once.
    quiet = logging.getLogger("fvcore")
    previous_level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            def encode(ids: torch.Tensor, mask: torch.Tensor):
                output = model.encode(ids, mask)
                return (output.states,), output

            def decode_step(sequences: torch.Tensor, live: torch.Tensor):
                logits, _ = stepper(sequences, live)
                # The tracer drops work whose results reach no output, so the tensors this step wrote to the cache
                # are outputs too: keys and values of exited positions feed only later steps. The source's
                # cross-attention keys and values are written at the first step only.
                caches = [stepper.cache.self_attention_cache]
                if sequences.shape[1] == 1:
                    caches.append(stepper.cache.cross_attention_cache)
                written = [tensor for cache in caches for layer in cache.layers for tensor in (layer.keys, layer.values)]
                return (logits, *written), logits

            encoder = _Call(model, encode)
            uncounted: Counter = Counter()
            encoder_macs = _count(encoder, (input_ids, attention_mask), include_norms, uncounted)
            # The first step also projects the source's cross-attention keys and values at every layer.
            stepper = DecoderStepper(model, encoder.result, use_cache=True, form="auto")
            step = _Call(model, decode_step)

            sequence = torch.full((1, 1), model.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
            live = torch.ones(1, dtype=torch.bool, device=input_ids.device)
            decoder_macs = 0
            for _ in range(settings.max_new_tokens):
                decoder_macs += _count(step, (sequence, live), include_norms, uncounted)
                logits = step.result
                next_token = processors(sequence, logits).argmax(dim=-1, keepdim=True)  # (1, 1)
                sequence = torch.cat([sequence, next_token], dim=1)
                if int(next_token) == model.eos_token_id:
                    break
    finally:
        quiet.setLevel(previous_level)
    return FvcoreCount(encoder_macs, decoder_macs, sequence.shape[1] - 1, sequence, uncounted)
