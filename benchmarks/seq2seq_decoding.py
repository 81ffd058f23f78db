"""Decoding speed of seq2seq HashEE against the full model: tokens per second next to the MACs ratio.

Both runs use the same weights, with and without the hash table, on the same
DialogSum test dialogues. Every example decodes exactly --new-tokens tokens
(greedy, no stop at the end token), so both sides do the same number of
steps. Runs alternate (full, HashEE, full, ...) and the median time of each
side is kept, so that load on a shared machine hits both alike.

    python benchmarks/seq2seq_decoding.py            # bert2bert warm-started from MiniLM, a fresh frequency hash
    python benchmarks/seq2seq_decoding.py --checkpoint runs/reproduce-cpu/dialogsum/hashee-freq

Both write benchmarks/seq2seq_results.csv and benchmarks/seq2seq_results.md.

The analytic MACs follow ``hashee_cli.seq2seq.flops`` (one MAC is one
multiply-add, fvcore's "flop").
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import pandas as pd
from transformers.utils import logging as transformers_logging

from hashee_cli import atomic
from hashee_cli.backbones import load_tokenizer
from hashee_cli.checkpoint import build_assigner
from hashee_cli.data.encoding import evaluation_batches
from hashee_cli.data.reading import DataConfig
from hashee_cli.data.tasks import get_task
from hashee_cli.hashing.build import HashSettings, build_hash_table
from hashee_cli.seq2seq.checkpoint import load_seq2seq_backbone, load_seq2seq_checkpoint
from hashee_cli.seq2seq.data import collate_summaries, encode_summaries, load_summaries, subsample_summaries
from hashee_cli.seq2seq.flops import Seq2SeqCosts, decoder_step_macs, encoder_macs
from hashee_cli.seq2seq.fvcore_count import count_generation_macs
from hashee_cli.seq2seq.generation import DecoderStepper, GenerationSettings, generate
from hashee_cli.seq2seq.model import HashEESeq2SeqModel

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "summarization"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="HashEE summarisation checkpoint (default: untrained bert2bert from MiniLM)")
    parser.add_argument("--exit-layers", default="4,5,6", help="Exit layers of the fresh frequency hash (without --checkpoint)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="Folder with DialogSum/")
    parser.add_argument("--examples", type=int, default=64, help="Test dialogues to decode")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-source-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32, help="Tokens decoded per example")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per side (median kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--fvcore-examples", type=int, default=2, help="Examples counted with fvcore as a cross-check (0: none)")
    parser.add_argument("--csv", type=Path, default=HERE / "seq2seq_results.csv", help="Results CSV, one row per model")
    parser.add_argument("--output", type=Path, default=HERE / "seq2seq_results.md", help="Markdown table")
    return parser.parse_args()


def load_models(args: argparse.Namespace) -> tuple[HashEESeq2SeqModel, HashEESeq2SeqModel, object]:
    """Return the HashEE model, the full model with the same weights, and the tokenizer."""
    if args.checkpoint:
        checkpoint = load_seq2seq_checkpoint(args.checkpoint)
        if checkpoint.model.assigner is None:
            raise SystemExit(f"{args.checkpoint} has no hash table; pass a HashEE checkpoint")
        return checkpoint.model, HashEESeq2SeqModel(checkpoint.model.model).eval(), checkpoint.tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    data = DataConfig(task="DialogSum", data_dir=str(args.data_dir), max_seq_length=args.max_source_length)
    exit_layers = [int(part) for part in args.exit_layers.split(",")]
    table = build_hash_table("minilm-l6", data, HashSettings(method="freq", exit_layers=exit_layers))
    torch.manual_seed(0)
    backbone = load_seq2seq_backbone("minilm-l6", tokenizer)
    assigner = build_assigner(table, tokenizer, len(tokenizer))
    return HashEESeq2SeqModel(backbone, assigner).eval(), HashEESeq2SeqModel(backbone).eval(), tokenizer


def decode_fixed(model: HashEESeq2SeqModel, batches: list[dict], new_tokens: int, costs: Seq2SeqCosts) -> tuple[float, float, float]:
    """Decode every batch for exactly ``new_tokens`` steps; return seconds, total MACs and decoder MACs."""
    total_macs = decoder_macs = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            encoder_output = model.encode(batch["input_ids"], batch["attention_mask"])
            source_lengths = batch["attention_mask"].sum(dim=1)
            stepper = DecoderStepper(model, encoder_output, use_cache=True, form="auto")
            rows = batch["input_ids"].shape[0]
            sequences = torch.full((rows, 1), model.decoder_start_token_id, dtype=torch.long)
            live = torch.ones(rows, dtype=torch.bool)
            total_macs += float(encoder_macs(costs, encoder_output.exit_layers).sum())
            for step in range(new_tokens):
                logits, exit_layers = stepper(sequences, live)
                step_macs = float(decoder_step_macs(costs, exit_layers, step + 1, source_lengths).sum())
                decoder_macs += step_macs
                total_macs += step_macs
                sequences = torch.cat([sequences, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return time.perf_counter() - start, total_macs, decoder_macs


def fvcore_cross_check(full_model, hashee_model, batches: list[dict], args: argparse.Namespace) -> list[str]:
    """Count a few examples with fvcore on the real forward and set the analytic MACs of the same run beside them."""
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    lines = [
        f"fvcore on the real forward of the first {args.fvcore_examples} examples (greedy, stopping at the end token; "
        "LayerNorm included, which the analytic model leaves out):",
        "",
        "| model | fvcore MACs per example | analytic MACs per example | fvcore / analytic |",
        "| --- | --- | --- | --- |",
    ]
    batch = batches[0]
    for name, model in (("full", full_model), ("hashee", hashee_model)):
        counted = analytic = 0.0
        for row in range(args.fvcore_examples):
            length = int(batch["attention_mask"][row].sum())
            source, mask = batch["input_ids"][row : row + 1, :length], batch["attention_mask"][row : row + 1, :length]
            count = count_generation_macs(model, source, mask, settings)
            output = generate(model, source, mask, settings)
            counted += count.encoder_macs + count.decoder_macs
            analytic += float(output.encoder_macs + output.decoder_macs)
        examples = args.fvcore_examples
        lines.append(f"| {name} | {counted / examples / 1e6:.1f} M | {analytic / examples / 1e6:.1f} M | {counted / analytic:.4f} |")
    return lines


def main() -> None:
    args = parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    hashee_model, full_model, tokenizer = load_models(args)
    costs = Seq2SeqCosts.from_model(full_model)

    data = DataConfig(task="DialogSum", data_dir=str(args.data_dir))
    split = subsample_summaries(load_summaries(data, get_task("DialogSum"), "test"), args.examples, seed=42)
    encoded = encode_summaries(split, tokenizer, args.max_source_length, args.new_tokens, full_model.decoder_start_token_id)
    batches = [
        collate_summaries(encoded, indices, full_model.pad_token_id, full_model.decoder_start_token_id)
        for indices in evaluation_batches(encoded.lengths, args.batch_size)
    ]

    load_before = os.getloadavg()
    decode_fixed(full_model, batches[:1], 2, costs)  # warm-up: first calls allocate
    decode_fixed(hashee_model, batches[:1], 2, costs)
    times = {"full": [], "hashee": []}
    macs = {}
    for _ in range(args.repeats):
        for name, model in (("full", full_model), ("hashee", hashee_model)):
            seconds, total, decoder = decode_fixed(model, batches, args.new_tokens, costs)
            times[name].append(seconds)
            macs[name] = (total, decoder)

    load_after = os.getloadavg()
    tokens = len(encoded) * args.new_tokens
    full_seconds, hashee_seconds = statistics.median(times["full"]), statistics.median(times["hashee"])
    records = []
    for name, seconds in (("full", full_seconds), ("hashee", hashee_seconds)):
        total, decoder = macs[name]
        records.append(
            {
                "model": name,
                "checkpoint": str(args.checkpoint or ""),
                "batch_size": args.batch_size,
                "examples": len(encoded),
                "new_tokens": args.new_tokens,
                "max_source_length": args.max_source_length,
                "repeats": args.repeats,
                "seconds_median": seconds,
                "tokens_per_second": tokens / seconds,
                "speedup": full_seconds / seconds,
                "macs_per_example": total / len(encoded),
                # Ratios are full / this model, as the speed-up is, so that the two compare directly.
                "macs_ratio": macs["full"][0] / total,
                "speedup_over_macs_ratio": (full_seconds / seconds) / (macs["full"][0] / total),
                "decoder_macs_per_token": decoder / tokens,
                "decoder_macs_ratio": macs["full"][1] / decoder,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_before": " ".join(f"{value:.1f}" for value in load_before),
                "load_after": " ".join(f"{value:.1f}" for value in load_after),
                "torch": torch.__version__,
            }
        )
    atomic.write_csv(args.csv, pd.DataFrame(records))

    lines = [
        f"Greedy decoding, batch {args.batch_size}, {len(encoded)} DialogSum test dialogues (at most "
        f"{args.max_source_length} tokens), {args.new_tokens} tokens each, median of {args.repeats} alternating runs; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); load average (1, 5, 15 min) before "
        f"{records[0]['load_before']}, after {records[0]['load_after']}.",
        "",
        "| model | tokens/s | speed-up | MACs per example | MACs ratio | speed-up / MACs ratio "
        "| decoder MACs per token | decoder MACs ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in records:
        lines.append(
            f"| {record['model']} | {record['tokens_per_second']:.1f} | {record['speedup']:.2f} | "
            f"{record['macs_per_example'] / 1e6:.1f} M | {record['macs_ratio']:.3f} | {record['speedup_over_macs_ratio']:.2f} | "
            f"{record['decoder_macs_per_token'] / 1e6:.2f} M | {record['decoder_macs_ratio']:.3f} |"
        )
    if args.fvcore_examples:
        lines += ["", *fvcore_cross_check(full_model, hashee_model, batches, args)]
    table = "\n".join(lines) + "\n"
    print(table)
    atomic.write_text(args.output, table)


if __name__ == "__main__":
    main()
