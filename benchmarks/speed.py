"""Time the full model, the gathered HashEE forward and a per-example loop on the same batches.

Run it from the repository root with ``make benchmark`` or directly
(the README in this folder shows the results):

    nice -n 0 python benchmarks/speed.py --data-dir data/elue --update-readme

For each task and batch size the script takes the same length-sorted test
batches (as ``hashee evaluate`` forms them) for every model and warms up.
It then times one pass over the batches per model and repeat, and rotates
the order of the models in each repeat so that drift in machine load spreads
evenly. It reports the median time and the speed-up of HashEE over the full
model next to the ratio of their analytic MACs per example. It also reports
the speed-up over the per-example loop and the peak memory of one forward
pass on the longest batch.

The backbone is the packaged MiniLM (minilm-l6) with an untrained
classification head: weights do not change the cost. The hash is a
frequency hash built on the task's training split with one bucket per layer,
as ``hashee build-hash --method freq`` builds it by default.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile
from transformers.utils import logging as transformers_logging

from hashee_cli.backbones import load_tokenizer
from hashee_cli.checkpoint import build_assigner
from hashee_cli.data.encoding import collate, encode_split, evaluation_batches
from hashee_cli.data.reading import DataConfig, load_split, subsample
from hashee_cli.data.tasks import get_task
from hashee_cli.flops import EncoderDims, example_macs
from hashee_cli.hashing.build import HashSettings, build_hash_table
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive_hashee import naive_forward  # noqa: E402

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
MODELS = ("full", "hashee", "naive")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="Folder in the ELUE layout: <dir>/<TASK>/test_full.tsv.")
    parser.add_argument("--tasks", nargs="+", default=["SST-2", "MRPC"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--batches", type=int, default=4, help="Batches per batch size (at least --min-examples examples).")
    parser.add_argument("--min-examples", type=int, default=32, help="Minimum number of test examples timed per batch size.")
    parser.add_argument("--naive-batch-sizes", nargs="+", type=int, default=[1, 8, 32], help="Batch sizes that also time the per-example loop.")
    parser.add_argument("--exit-layers", default=None, help="Exit layer per bucket, e.g. 4,5,6 (default: one bucket per layer).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed passes before the timed ones.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed passes per model; the median is reported.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results.csv"))
    parser.add_argument("--markdown", type=Path, default=Path("benchmarks/results.md"))
    parser.add_argument("--update-readme", action="store_true", help="Replace the results section of benchmarks/README.md.")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Return the most memory that tensors created by ``run`` held at once, weights and inputs excluded.

    On CUDA this is the allocator's peak. On CPU it is the running sum of the
    allocations and frees that the torch profiler records per operator, so a
    workspace that an operator allocates and frees inside itself is missed.
    """
    if device.type == "cuda":
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    events = sorted((event for event in profiler.events() if event.self_cpu_memory_usage), key=lambda event: event.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def load_model(task_name: str, data_dir: Path, exit_layers: list[int] | None, device: torch.device) -> HashEEModel:
    task = get_task(task_name)
    data = DataConfig(task=task_name, data_dir=str(data_dir))
    table = build_hash_table("minilm-l6", data, HashSettings(method="freq", exit_layers=exit_layers))
    tokenizer = load_tokenizer("minilm-l6")
    hf_model = load_backbone_for_task("minilm-l6", task)
    return HashEEModel(hf_model, build_assigner(table, tokenizer, hf_model.config.vocab_size)).to(device).eval()


def make_batches(task_name: str, data_dir: Path, count: int, batch_size: int, seed: int, device: torch.device) -> list[dict]:
    task = get_task(task_name)
    split = subsample(load_split(DataConfig(task=task_name, data_dir=str(data_dir)), task, "test"), count, seed)
    encoded = encode_split(split, task, load_tokenizer("minilm-l6"), 128)
    batches = []
    for indices in evaluation_batches(encoded.lengths, batch_size):
        batch = collate(encoded, indices, pad_token_id=0)
        batch.pop("labels", None)
        batches.append({name: tensor.to(device) for name, tensor in batch.items()})
    return batches


def forwards(model: HashEEModel) -> dict[str, Callable[[dict], torch.Tensor]]:
    return {
        "full": lambda batch: model(**batch, form="dense").logits,
        "hashee": lambda batch: model(**batch, form="gathered").logits,
        "naive": lambda batch: naive_forward(model, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")),
    }


def macs_ratio(model: HashEEModel, batches: list[dict]) -> float:
    """Return the full model's analytic MACs per example over HashEE's, on the same examples."""
    dims = EncoderDims.from_config(model.config)
    full = hashee = 0.0
    for batch in batches:
        mask = batch["attention_mask"]
        full += example_macs(dims, mask.long() * model.num_layers).sum().item()
        hashee += example_macs(dims, model.assign_exit_layers(batch["input_ids"], mask)).sum().item()
    return full / hashee


def time_models(runs: dict[str, Callable], batches: list[dict], args, device: torch.device) -> dict[str, list[float]]:
    """Return the seconds of each timed pass over ``batches``, per model."""
    times = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(args.warmup + args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for batch in batches:
                runs[name](batch)
            synchronize(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of the ratio of two models' times in the same repeat."""
    return statistics.median(top / bottom for top, bottom in zip(numerator, denominator))


def benchmark_batch_size(model, task_name, batch_size, args, device) -> dict:
    count = max(args.min_examples, batch_size * args.batches)
    batches = make_batches(task_name, args.data_dir, count, batch_size, args.seed, device)
    runs = forwards(model)
    if batch_size not in args.naive_batch_sizes:
        runs.pop("naive")

    with torch.inference_mode():
        reference = torch.cat([runs["hashee"](batch) for batch in batches])
        if "naive" in runs:
            naive = torch.cat([runs["naive"](batch) for batch in batches])
            # The loop must compute the same math, or its timing means nothing.
            assert (naive - reference).abs().max() < 1e-3, "the per-example loop disagrees with the gathered form"
        times = time_models(runs, batches, args, device)
        # Batches are sorted longest first, so the first one sets the peak.
        peaks = {name: peak_memory_bytes(lambda run=run: run(batches[0]), device) for name, run in runs.items()}
        ratio = macs_ratio(model, batches)

    num_examples = sum(len(batch["input_ids"]) for batch in batches)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    row = {
        "task": task_name,
        "batch_size": batch_size,
        "examples": num_examples,
        "batches": len(batches),
        "mean_tokens": tokens / num_examples,
    }
    for name in MODELS:
        seconds = statistics.median(times[name]) if name in times else float("nan")
        row[f"{name}_ms_per_batch"] = 1000 * seconds / len(batches)
    row["speedup"] = median_ratio(times["full"], times["hashee"])
    row["macs_ratio"] = ratio
    row["speedup_over_macs_ratio"] = row["speedup"] / ratio
    row["speedup_over_naive"] = median_ratio(times["naive"], times["hashee"]) if "naive" in times else float("nan")
    for name in MODELS:
        row[f"{name}_peak_mib"] = peaks[name] / 2**20 if name in peaks else float("nan")
    row["peak_ratio_to_full"] = peaks["hashee"] / peaks["full"]
    return row


def machine_lines(args, device: torch.device, load_before: tuple, load_after: tuple) -> list[str]:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    if device.type == "cuda":
        cpu += f"; GPU {torch.cuda.get_device_name(device)}"
    return [
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, device {device}.",
        f"- Load average (1, 5, 15 min) before: {load_before[0]:.1f}, {load_before[1]:.1f}, {load_before[2]:.1f}; "
        f"after: {load_after[0]:.1f}, {load_after[1]:.1f}, {load_after[2]:.1f}.",
        f"- {args.warmup} warm-up pass(es), median of {args.repeats} timed passes; same batches for every model.",
    ]


def markdown_table(results: pd.DataFrame) -> str:
    columns = {
        "task": "task",
        "batch_size": "batch",
        "mean_tokens": "tokens",
        "full_ms_per_batch": "full ms/batch",
        "hashee_ms_per_batch": "HashEE ms/batch",
        "naive_ms_per_batch": "loop ms/batch",
        "speedup": "speed-up",
        "macs_ratio": "MACs ratio",
        "speedup_over_macs_ratio": "speed-up / MACs ratio",
        "speedup_over_naive": "vs loop",
        "full_peak_mib": "full peak MiB",
        "hashee_peak_mib": "HashEE peak MiB",
        "peak_ratio_to_full": "peak ratio",
    }
    lines = ["| " + " | ".join(columns.values()) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in results.to_dict(orient="records"):
        cells = []
        for column in columns:
            value = row[column]
            if not isinstance(value, float):
                cells.append(str(value))
            elif pd.isna(value):
                cells.append("")
            elif column == "peak_ratio_to_full":
                # Three decimals, so that a peak slightly above the full model's does not print as 1.00.
                cells.append(f"{value:.3f}")
            elif abs(value) < 100:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section to replace")
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    readme.write_text(f"{before}{README_START}\n{section}{README_END}{after}", encoding="utf-8")


def main() -> None:
    args = parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    rows = []
    for task_name in args.tasks:
        exit_layers = [int(layer) for layer in args.exit_layers.split(",")] if args.exit_layers else None
        model = load_model(task_name, args.data_dir, exit_layers, device)
        for batch_size in args.batch_sizes:
            row = benchmark_batch_size(model, task_name, batch_size, args, device)
            print(
                f"{task_name} batch {batch_size}: speed-up {row['speedup']:.2f} (MACs ratio {row['macs_ratio']:.2f}), "
                f"vs loop {row['speedup_over_naive']:.1f}, peak ratio {row['peak_ratio_to_full']:.2f}",
                flush=True,
            )
            rows.append(row)
    results = pd.DataFrame(rows)
    results["threads"] = torch.get_num_threads()
    results["device"] = str(device)

    section = "\n".join(machine_lines(args, device, load_before, os.getloadavg())) + "\n\n" + markdown_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.output, index=False)
    args.markdown.write_text(section, encoding="utf-8")
    if args.update_readme:
        update_readme(Path(__file__).resolve().parent / "README.md", section)
    print(section)


if __name__ == "__main__":
    main()
