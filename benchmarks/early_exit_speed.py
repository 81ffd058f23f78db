"""Measure the wall-clock speed-up of real per-example early exit against the full model, in one process.

Usage:
    python benchmarks/early_exit_speed.py runs/reproduce-cpu/sst2/deebert --thresholds 0.03,0.1,0.3
    python benchmarks/early_exit_speed.py runs/reproduce-cpu/sst2/pabee --patience 1,2,3 --limit 1000

The full model is the checkpoint's own backbone and final classifier run
densely, so both sides share weights, data, batches and threads. Passes are
interleaved (full, then every setting, repeated) and the median time of
each is kept, so load from other processes hits all of them alike. The
table puts the measured speed-up next to the analytic MACs ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers.utils import logging as transformers_logging

from hashee_cli.evaluation import load_evaluation_data, predict
from hashee_cli.exit_sweep import METHOD_RULES, record_layer_logits, run_early_exit
from hashee_cli.flops import EncoderDims, early_exit_macs, full_model_macs
from hashee_cli.modeling.early_exit import replay_exits
from hashee_cli.modeling.exit_rules import build_rules
from hashee_cli.modeling.model import HashEEModel


def _numbers(text: str | None, kind: type) -> list | None:
    return [kind(part) for part in text.split(",")] if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a deebert, pabee or multi-exit checkpoint directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a seeded subset of this many examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--exit-rule", default=None, help="entropy or patience (default: the checkpoint's method)")
    parser.add_argument("--thresholds", default=None, help="entropy thresholds, comma-separated")
    parser.add_argument("--patience", default=None, help="patience values, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_evaluation_data(args.checkpoint, args.split, device="cpu", limit=args.limit)
    model = data.checkpoint.model
    task = data.task
    regression = task.problem_type == "regression"
    rule_name = args.exit_rule or METHOD_RULES.get(data.checkpoint.method)
    if rule_name is None:
        sys.exit(f"error: pass --exit-rule for a {data.checkpoint.method} checkpoint")
    rules = build_rules(
        rule_name, model.num_layers, 1 if regression else task.num_labels, regression,
        thresholds=_numbers(args.thresholds, float), patience=_numbers(args.patience, int),
    )

    full = HashEEModel(model.model).eval()
    dims = EncoderDims.from_config(model.config)
    lengths = torch.tensor(data.encoded.lengths)
    full_macs = float(sum(full_model_macs(dims, int(length)) for length in lengths) / len(lengths))
    record = record_layer_logits(model, data.encoded, args.batch_size, data.pad_token_id)

    seconds: dict[str, list[float]] = {"full": []}
    agreement: dict[str, float] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        predict(full, data.encoded, args.batch_size, data.pad_token_id, form="dense")
        seconds["full"].append(time.perf_counter() - start)
        for rule in rules:
            output, elapsed = run_early_exit(model, rule, data.encoded, args.batch_size, data.pad_token_id)
            seconds.setdefault(rule.setting, []).append(elapsed)
            agreement[rule.setting] = float((output.exit_layers == replay_exits(record.all_logits, rule).exit_layers).float().mean())

    full_time = statistics.median(seconds["full"])
    print(f"{len(lengths)} examples, batch size {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats} passes")
    print("| setting | mean exit layer | MACs ratio to full | measured speed-up | examples/s | replay agreement |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| full | {model.num_layers:.2f} | 1.000 | 1.00 | {len(lengths) / full_time:.0f} | |")
    for rule in rules:
        exits = replay_exits(record.all_logits, rule).exit_layers
        macs = float(early_exit_macs(dims, lengths, exits).mean())
        elapsed = statistics.median(seconds[rule.setting])
        print(
            f"| {rule.setting} | {exits.float().mean():.2f} | {macs / full_macs:.3f} | {full_time / elapsed:.2f} | "
            f"{len(lengths) / elapsed:.0f} | {agreement[rule.setting]:.4f} |"
        )


if __name__ == "__main__":
    main()
