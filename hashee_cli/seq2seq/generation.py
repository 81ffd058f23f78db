"""Greedy and beam-search decoding over the HashEE decoder, with or without the key/value cache.

Hugging Face's ``generate`` drives a model's own forward; HashEE replaces the
layer loops, so the search runs here on top of ``HashEESeq2SeqModel.decode``.
It follows ``generate``'s conventions: the decoder starts from
``decoder_start_token_id``, finished rows are padded with ``pad_token_id``,
beam scores are summed log-probabilities divided by (generated length) **
``length_penalty``, and the model's ``forced_bos_token_id`` and
``forced_eos_token_id`` are honoured through transformers' logits processors.

Every step also records the analytic cost of the rows it ran (see
``hashee_cli.seq2seq.flops``), counted per example as if it ran alone: a
finished example costs nothing more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
)

from hashee_cli.errors import HasheeError
from hashee_cli.seq2seq.flops import Seq2SeqCosts, decoder_step_macs, encoder_macs
from hashee_cli.seq2seq.model import EncoderOutput, HashEESeq2SeqModel

# Score given to impossible continuations; finite so that sums stay ordered.
_NEG_INF = -1.0e9


@dataclass
class GenerationSettings:
    """Decoding settings of summaries."""

    max_new_tokens: int = 64
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})"),
            (self.num_beams >= 1, f"--num-beams must be at least 1 (got {self.num_beams})"),
            (self.no_repeat_ngram_size >= 0, f"--no-repeat-ngram-size must be 0 or more (got {self.no_repeat_ngram_size})"),
        ]
        for valid, message in checks:
            if not valid:
                raise HasheeError(message)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationOutput:
    """Decoded sequences and what they cost.

    ``sequences`` (B, 1 + M) start with the decoder start token; positions
    after a row's end hold padding. ``lengths`` (B,) count the generated
    tokens, the end-of-sequence token included. ``encoder_macs`` and
    ``decoder_macs`` (B,) are analytic multiply-accumulates per example
    (the decoder's include the language-model head).
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    encoder_exit_layers: torch.Tensor
    encoder_macs: torch.Tensor
    decoder_macs: torch.Tensor


class DecoderStepper:
    """Feed one new token per row to the decoder and return the next-token logits.

    With ``use_cache`` only the new token runs and the cache contains the keys
    and values of earlier positions; without it the whole prefix is
    recomputed at every step. Each position's exit layer is fixed when its
    token is fed and kept, so both ways compute the same states.
    """

    def __init__(self, model: HashEESeq2SeqModel, encoder_output: EncoderOutput, use_cache: bool, form: str):
        self.model = model
        self.encoder_output = encoder_output
        self.form = form
        self.cache = model.new_cache() if use_cache else None
        rows = encoder_output.states.shape[0]
        device = encoder_output.states.device
        self.valid = torch.zeros((rows, 0), dtype=torch.bool, device=device)  # (R, t) readable positions
        self.exit_layers = torch.zeros((rows, 0), dtype=torch.long, device=device)  # (R, t)

    def __call__(self, sequences: torch.Tensor, live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits (R, V) after the last token of sequences (R, t) and that token's exit layers (R,).

        Rows that are not ``live`` (already finished) feed a padding position:
        exit layer 0, never active, masked out as a key.
        """
        position = sequences.shape[1] - 1
        new_exits = self.model.assign_decoder_exit_layers(sequences[:, -1:], live.unsqueeze(1), position)  # (R, 1)
        self.valid = torch.cat([self.valid, live.unsqueeze(1)], dim=1)
        self.exit_layers = torch.cat([self.exit_layers, new_exits], dim=1)
        if self.cache is not None:
            logits, _ = self.model.decode(
                sequences[:, -1:], self.encoder_output, self.valid, new_exits, cache=self.cache, form=self.form
            )
        else:
            logits, _ = self.model.decode(sequences, self.encoder_output, self.valid, self.exit_layers, form=self.form)
        return logits[:, -1], new_exits[:, 0]

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (R,) in that order, as beam search reorders hypotheses."""
        self.valid = self.valid.index_select(0, index)
        self.exit_layers = self.exit_layers.index_select(0, index)
        if self.cache is not None:
            # Cross-attention keys are the same for all beams of an example, so only the self-attention cache moves.
            self.cache.self_attention_cache.reorder_cache(index)


def _logits_processors(model: HashEESeq2SeqModel, settings: GenerationSettings) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if settings.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    generation_config = model.model.generation_config
    forced_bos = getattr(generation_config, "forced_bos_token_id", None)
    forced_eos = getattr(generation_config, "forced_eos_token_id", None)
    if forced_bos is not None:
        processors.append(ForcedBOSTokenLogitsProcessor(forced_bos))
    if forced_eos is not None:
        # Hugging Face's max_length counts the decoder start token.
        processors.append(ForcedEOSTokenLogitsProcessor(settings.max_new_tokens + 1, forced_eos))
    return processors


def generate(
    model: HashEESeq2SeqModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    use_cache: bool = True,
    form: str = "auto",
    costs: Seq2SeqCosts | None = None,
) -> GenerationOutput:
    """Encode input_ids (B, S) and decode a summary per row, greedily or with beam search."""
    model.eval()
    costs = costs or Seq2SeqCosts.from_model(model)
    with torch.inference_mode():
        encoder_output = model.encode(input_ids, attention_mask, form=form)
        source_cost = encoder_macs(costs, encoder_output.exit_layers)
        if settings.num_beams == 1:
            sequences, lengths, decoder_cost = _greedy(model, encoder_output, settings, use_cache, form, costs)
        else:
            sequences, lengths, decoder_cost = _beam_search(model, encoder_output, settings, use_cache, form, costs)
    return GenerationOutput(sequences, lengths, encoder_output.exit_layers, source_cost, decoder_cost)


Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # sequences (B, 1 + M), lengths (B,), decoder MACs (B,)


def _greedy(
    model: HashEESeq2SeqModel,
    encoder_output: EncoderOutput,
    settings: GenerationSettings,
    use_cache: bool,
    form: str,
    costs: Seq2SeqCosts,
) -> Decoded:
    batch = encoder_output.states.shape[0]
    device = encoder_output.states.device
    source_lengths = encoder_output.attention_mask.sum(dim=1)  # (B,)
    processors = _logits_processors(model, settings)
    stepper = DecoderStepper(model, encoder_output, use_cache, form)

    sequences = torch.full((batch, 1), model.decoder_start_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    decoder_cost = torch.zeros(batch, dtype=torch.float64, device=device)

    for step in range(settings.max_new_tokens):
        live = ~finished
        logits, exit_layers = stepper(sequences, live)  # (B, V), (B,)
        decoder_cost += live * decoder_step_macs(costs, exit_layers, step + 1, source_lengths)
        scores = processors(sequences, logits)
        next_tokens = torch.where(finished, model.pad_token_id, scores.argmax(dim=-1))  # (B,)
        sequences = torch.cat([sequences, next_tokens.unsqueeze(1)], dim=1)
        lengths += live
        finished |= next_tokens == model.eos_token_id
        if bool(finished.all()):
            break
    return sequences, lengths, decoder_cost


def _beam_search(
    model: HashEESeq2SeqModel,
    encoder_output: EncoderOutput,
    settings: GenerationSettings,
    use_cache: bool,
    form: str,
    costs: Seq2SeqCosts,
) -> Decoded:
    """Keep ``num_beams`` running hypotheses per example and the ``num_beams`` best finished ones.

    At each step the 2K best continuations of the K running beams are
    considered (K = num_beams): those that end with the end-of-sequence token
    and rank in the first K join the finished set, the best K others keep
    running. An example is done once it has K finished hypotheses and, with
    ``early_stopping``, at once, else when no running beam can beat the worst
    finished one at its current length. Rows are example-major: row
    b * K + k is beam k of example b.
    """
    beams = settings.num_beams
    batch = encoder_output.states.shape[0]
    device = encoder_output.states.device
    eos, pad = model.eos_token_id, model.pad_token_id
    processors = _logits_processors(model, settings)
    encoder_output = encoder_output.repeat_rows(beams)
    source_lengths = encoder_output.attention_mask.sum(dim=1)  # (B*K,)
    stepper = DecoderStepper(model, encoder_output, use_cache, form)
    example_offset = torch.arange(batch, device=device).unsqueeze(1) * beams  # (B, 1)

    running = torch.full((batch, beams, 1), model.decoder_start_token_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the first step does not pick K copies of one token.
    running_scores = torch.full((batch, beams), _NEG_INF, device=device)
    running_scores[:, 0] = 0.0
    finished = torch.full((batch, beams, 1), pad, dtype=torch.long, device=device)
    finished_scores = torch.full((batch, beams), _NEG_INF, device=device)
    finished_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    decoder_cost = torch.zeros(batch, dtype=torch.float64, device=device)

    for step in range(settings.max_new_tokens):
        generated = step + 1  # tokens in each hypothesis after this step
        sequences = running.view(batch * beams, -1)  # (B*K, t)
        live = (~done).repeat_interleave(beams)  # (B*K,)
        logits, exit_layers = stepper(sequences, torch.ones_like(live))  # (B*K, V), (B*K,)
        step_cost = decoder_step_macs(costs, exit_layers, generated, source_lengths).view(batch, beams)
        decoder_cost += (~done) * step_cost.sum(dim=1)

        log_probs = processors(sequences, F.log_softmax(logits.float(), dim=-1))  # (B*K, V)
        vocab_size = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab_size) + running_scores.unsqueeze(-1)).view(batch, -1)
        top_scores, top_index = totals.topk(2 * beams, dim=1)  # (B, 2K)
        top_beams = top_index // vocab_size
        top_tokens = top_index % vocab_size
        candidates = torch.cat(
            [running.gather(1, top_beams.unsqueeze(-1).expand(-1, -1, running.shape[2])), top_tokens.unsqueeze(-1)],
            dim=2,
        )  # (B, 2K, t + 1)

        # Finished candidates: end-of-sequence among the first K, for examples still open.
        ends = top_tokens == eos
        in_first_k = torch.arange(2 * beams, device=device).unsqueeze(0) < beams
        newly_finished = ends & in_first_k & ~done.unsqueeze(1)
        normalised = top_scores / generated**settings.length_penalty
        finished = torch.cat([finished, torch.full_like(finished[:, :, :1], pad)], dim=2)
        pool_scores = torch.cat([finished_scores, torch.where(newly_finished, normalised, _NEG_INF)], dim=1)  # (B, 3K)
        pool = torch.cat([finished, candidates], dim=1)  # (B, 3K, t + 1)
        pool_lengths = torch.cat([finished_lengths, torch.full_like(top_tokens, generated)], dim=1)
        finished_scores, keep = pool_scores.topk(beams, dim=1)  # (B, K)
        finished = pool.gather(1, keep.unsqueeze(-1).expand(-1, -1, pool.shape[2]))
        finished_lengths = pool_lengths.gather(1, keep)

        # Running beams: the best K candidates that did not end.
        running_scores, keep = torch.where(ends, _NEG_INF, top_scores).topk(beams, dim=1)  # (B, K)
        running = candidates.gather(1, keep.unsqueeze(-1).expand(-1, -1, candidates.shape[2]))
        source_rows = (top_beams.gather(1, keep) + example_offset).view(-1)  # (B*K,) rows that each new beam extends
        stepper.select_rows(source_rows)

        full = (finished_scores > _NEG_INF / 2).all(dim=1)
        if settings.early_stopping:
            done |= full
        else:
            best_running = running_scores[:, 0] / generated**settings.length_penalty
            done |= full & (best_running <= finished_scores[:, -1])
        if bool(done.all()):
            break

    # Open examples at the length limit: running beams compete with the finished ones.
    if not bool(done.all()):
        generated = running.shape[2] - 1
        open_scores = torch.where(done.unsqueeze(1), _NEG_INF, running_scores / generated**settings.length_penalty)
        pool_scores = torch.cat([finished_scores, open_scores], dim=1)
        pool = torch.cat([finished, running], dim=1)
        pool_lengths = torch.cat([finished_lengths, torch.full_like(finished_lengths, generated)], dim=1)
        finished_scores, keep = pool_scores.topk(beams, dim=1)
        finished = pool.gather(1, keep.unsqueeze(-1).expand(-1, -1, pool.shape[2]))
        finished_lengths = pool_lengths.gather(1, keep)

    best = finished[:, 0]  # (B, t + 1)
    lengths = finished_lengths[:, 0]
    positions = torch.arange(best.shape[1], device=device).unsqueeze(0)
    best = torch.where(positions <= lengths.unsqueeze(1), best, pad)
    return best, lengths, decoder_cost
