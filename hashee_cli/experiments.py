"""Experiment configs: the comparison of HashEE with its baselines on several tasks, as one YAML file.

A config lists tasks, the methods to train and the HashEE hash tables to
build. ``plan_experiment`` turns it into the ``hashee`` commands a user
would type (build-hash, finetune, evaluate, report), each with the files it
writes, and ``run_step`` runs one of them. Steps whose outputs exist and are
newer than their inputs are reused, so an interrupted experiment resumes
where it stopped. The config is saved beside the results, so a changed
config cannot silently mix with old results.

Config keys (unknown keys are rejected):
    output_dir, model, data_dir, training, evaluation, report, tasks, methods
See experiments/comparison-cpu.yaml for a documented example.
"""

from __future__ import annotations

import dataclasses
import difflib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hashee_cli import atomic
from hashee_cli.data.tasks import get_task
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.builders import HASH_METHODS

RESOLVED_CONFIG = "experiment.yaml"
BASELINES = ("full", "static", "deebert", "pabee")


@dataclass
class TrainingSection:
    """Fine-tuning options shared by every run (the flags of `hashee finetune`)."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    train_limit: int | None = None
    dev_limit: int | None = None
    seed: int = 42
    max_seq_length: int = 128


@dataclass
class EvaluationSection:
    """Evaluation options shared by every run (the flags of `hashee evaluate`)."""

    split: str = "test"
    limit: int | None = None
    batch_size: int = 64
    early_exit: bool = True
    # fvcore counts per run on a seeded subset of this many examples (each is traced alone); none without it.
    count_limit: int | None = None


@dataclass
class ReportSection:
    """Reference curves of the ELUE scores."""

    references: list[str] = field(default_factory=lambda: ["static", "deebert", "pabee"])


@dataclass
class TaskSection:
    """One task: a registered name, optional split files, and per-task limits or a subset of the methods.

    File paths may start with ``{data_dir}``, which stands for the config's data folder.
    """

    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = None
    methods: list[str] | None = None


@dataclass
class StaticSection:
    depths: list[int] | None = None


@dataclass
class DeebertSection:
    thresholds: list[float] | None = None
    init_from_full: bool = True


@dataclass
class PabeeSection:
    patience: list[int] | None = None
    tolerance: float = 0.1


@dataclass
class HashSection:
    """One HashEE setting: a hash function and its exit layers (or a number of buckets)."""

    hash: str
    exit_layers: list[int] | None = None
    num_buckets: int | None = None

    @property
    def name(self) -> str:
        layers = "-".join(map(str, self.exit_layers)) if self.exit_layers else f"{self.num_buckets or 'all'}buckets"
        return f"hashee-{self.hash}-{layers}"


@dataclass
class MethodsSection:
    """The methods to run; a baseline is left out when its key is absent or null."""

    full: dict | None = None
    static: StaticSection | None = None
    deebert: DeebertSection | None = None
    pabee: PabeeSection | None = None
    hashee: list[HashSection] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name in BASELINES if getattr(self, name) is not None] + [setting.name for setting in self.hashee]


@dataclass
class ExperimentConfig:
    output_dir: str
    tasks: dict[str, TaskSection]
    methods: MethodsSection
    model: str = "minilm-l6"
    data_dir: str | None = None
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    report: ReportSection = field(default_factory=ReportSection)


def _check_keys(data: dict, known: list[str], where: str) -> None:
    if not isinstance(data, dict):
        raise HasheeError(f"{where} must be a mapping of keys to values, not {type(data).__name__}")
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise HasheeError(f"unknown key {key!r} in {where}; {hint}known keys: {', '.join(known)}")


def _section(cls, data: dict | None, where: str):
    """Build a dataclass section from a mapping, rejecting unknown and missing keys."""
    data = {} if data is None else data
    names = [item.name for item in dataclasses.fields(cls)]
    _check_keys(data, names, where)
    try:
        return cls(**data)
    except TypeError as error:
        raise HasheeError(f"{where}: {error}") from error


def _check_type(value, expected: type | tuple, where: str) -> None:
    # bool is an int in Python, but a count of epochs given as `true` is a typo.
    if isinstance(value, bool) and expected is not bool:
        raise HasheeError(f"{where} must be {getattr(expected, '__name__', expected)}, not {value!r}")
    if not isinstance(value, expected):
        names = " or ".join(kind.__name__ for kind in (expected if isinstance(expected, tuple) else (expected,)))
        raise HasheeError(f"{where} must be {names}, not {value!r}")


def parse_config(data: dict, source: str = "config") -> ExperimentConfig:
    """Validate a parsed YAML mapping and return the config; every error names the key."""
    top = [item.name for item in dataclasses.fields(ExperimentConfig)]
    _check_keys(data, top, source)
    for required in ("output_dir", "tasks", "methods"):
        if required not in data:
            raise HasheeError(f"{source} lacks the key {required!r}")

    training = _section(TrainingSection, data.get("training"), f"{source}: training")
    for name in ("epochs", "batch_size", "seed", "max_seq_length"):
        _check_type(getattr(training, name), int, f"{source}: training.{name}")
    _check_type(training.learning_rate, (int, float), f"{source}: training.learning_rate")
    evaluation = _section(EvaluationSection, data.get("evaluation"), f"{source}: evaluation")
    _check_type(evaluation.early_exit, bool, f"{source}: evaluation.early_exit")
    if evaluation.count_limit is not None:
        _check_type(evaluation.count_limit, int, f"{source}: evaluation.count_limit")
        if evaluation.count_limit < 1:
            raise HasheeError(f"{source}: evaluation.count_limit must be at least 1 (got {evaluation.count_limit})")
    report = _section(ReportSection, data.get("report"), f"{source}: report")

    methods_data = data["methods"]
    _check_keys(methods_data, [item.name for item in dataclasses.fields(MethodsSection)], f"{source}: methods")
    hashee = []
    for index, entry in enumerate(methods_data.get("hashee") or []):
        setting = _section(HashSection, entry, f"{source}: methods.hashee[{index}]")
        if setting.hash not in HASH_METHODS:
            close = difflib.get_close_matches(setting.hash, list(HASH_METHODS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise HasheeError(f"{source}: methods.hashee[{index}].hash {setting.hash!r} is unknown; {hint}use one of {', '.join(HASH_METHODS)}")
        hashee.append(setting)
    sections = {"static": StaticSection, "deebert": DeebertSection, "pabee": PabeeSection}
    methods = MethodsSection(
        full=methods_data.get("full", {}) if "full" in methods_data else None,
        hashee=hashee,
        **{
            name: _section(cls, methods_data[name], f"{source}: methods.{name}") if name in methods_data else None
            for name, cls in sections.items()
        },
    )
    if methods.deebert is not None and methods.deebert.init_from_full and methods.full is None:
        raise HasheeError(f"{source}: methods.deebert.init_from_full needs methods.full, or set init_from_full: false")
    names = [setting.name for setting in hashee]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise HasheeError(f"{source}: methods.hashee lists {', '.join(sorted(duplicates))} twice")

    tasks_data = data["tasks"]
    if not isinstance(tasks_data, dict) or not tasks_data:
        raise HasheeError(f"{source}: tasks must map task names to their options (an empty mapping {{}} for none)")
    tasks = {}
    all_methods = methods.names()
    for name, options in tasks_data.items():
        task = get_task(str(name))  # rejects unknown names with a suggestion
        section = _section(TaskSection, options, f"{source}: tasks.{name}")
        chosen = section.methods if section.methods is not None else all_methods
        for method in chosen:
            if method not in all_methods:
                close = difflib.get_close_matches(method, all_methods, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise HasheeError(f"{source}: tasks.{name}.methods lists {method!r}, which methods does not define; {hint}")
        if task.problem_type == "regression" and "deebert" in chosen:
            raise HasheeError(
                f"{source}: tasks.{name} is a regression task, and DeeBERT's entropy rule needs class probabilities; "
                f"list its methods without deebert"
            )
        tasks[task.name] = section

    try:
        return ExperimentConfig(
            output_dir=str(data["output_dir"]),
            tasks=tasks,
            methods=methods,
            model=str(data.get("model", "minilm-l6")),
            data_dir=data.get("data_dir"),
            training=training,
            evaluation=evaluation,
            report=report,
        )
    except TypeError as error:
        raise HasheeError(f"{source}: {error}") from error


def load_config(path: Path) -> tuple[ExperimentConfig, dict]:
    """Read and validate a YAML config; return it with the raw mapping."""
    if not path.is_file():
        raise HasheeError(f"experiment config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise HasheeError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise HasheeError(f"{path} must contain a mapping of config keys; see experiments/comparison-cpu.yaml")
    return parse_config(data, str(path)), data


@dataclass
class Step:
    """One `hashee` command of an experiment, the files it reads from earlier steps, and the files it writes."""

    task: str
    name: str
    argv: list[str]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    always: bool = False

    def done(self) -> bool:
        """Return whether every output exists and is newer than every input, as make decides."""
        if self.always or not all(path.exists() for path in self.outputs):
            return False
        if not self.inputs:
            return True
        if not all(path.exists() for path in self.inputs):
            return False
        oldest_output = min(path.stat().st_mtime for path in self.outputs)
        return oldest_output >= max(path.stat().st_mtime for path in self.inputs)

    def command(self) -> str:
        return " ".join(["hashee", *(_quote(part) for part in self.argv)])


def _quote(text: str) -> str:
    return text if text and all(char.isalnum() or char in "-_./,=:" for char in text) else repr(text)


def _expand(path: str, config: ExperimentConfig) -> str:
    """Replace ``{data_dir}`` in a file path with the config's data folder."""
    if "{data_dir}" in path and not config.data_dir:
        raise HasheeError(f"the path {path!r} uses {{data_dir}} but the config sets no data_dir; set it or pass --data-dir")
    return path.replace("{data_dir}", str(config.data_dir or ""))


def _csv(values) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def _check_selection(selected: list[str] | None, known: list[str], what: str) -> None:
    for name in selected or []:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise HasheeError(f"--{what} {name!r} is not in the config; {hint}it defines {', '.join(known)}")


def plan_experiment(
    config: ExperimentConfig,
    overwrite: bool = False,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
) -> list[Step]:
    """Return the commands of every task in order: hash tables, fine-tuning, evaluation, then the report.

    ``tasks`` and ``methods`` run a subset of the config; the report then
    covers that subset. DeeBERT on top of the full model brings the full
    model's steps along, which are reused when already done.
    """
    _check_selection(tasks, list(config.tasks), "task")
    _check_selection(methods, config.methods.names(), "method")
    selected_methods = list(methods or [])
    root = Path(config.output_dir)
    steps: list[Step] = []
    metrics: list[Path] = []
    replace = ["--overwrite"] if overwrite else []
    for task_name, task in config.tasks.items():
        if tasks and task_name not in tasks:
            continue
        folder = root / task_name
        chosen = task.methods if task.methods is not None else config.methods.names()
        if methods:
            needed = set(methods)
            if "deebert" in needed and config.methods.deebert.init_from_full:
                needed.add("full")
            chosen = [name for name in chosen if name in needed]
        # build-hash reads only the training split; finetune saves all three sources for evaluate.
        hash_data = ["--task", task_name]
        if config.data_dir:
            hash_data += ["--data-dir", str(config.data_dir)]
        if task.train_file:
            hash_data += ["--train-file", _expand(task.train_file, config)]
        data = list(hash_data)
        for option, value in (("--dev-file", task.dev_file), ("--test-file", task.test_file)):
            if value:
                data += [option, _expand(value, config)]
        training = config.training
        train_limit = task.train_limit if task.train_limit is not None else training.train_limit
        dev_limit = task.dev_limit if task.dev_limit is not None else training.dev_limit
        train = [
            "--model", config.model, *data, "--epochs", str(training.epochs), "--batch-size", str(training.batch_size),
            "--learning-rate", f"{training.learning_rate:g}", "--seed", str(training.seed),
            "--max-seq-length", str(training.max_seq_length),
        ]
        if train_limit is not None:
            train += ["--train-limit", str(train_limit)]
        if dev_limit is not None:
            train += ["--dev-limit", str(dev_limit)]

        runs: list[tuple[str, list[str], list[Path]]] = []
        for setting in config.methods.hashee:
            if setting.name not in chosen:
                continue
            table = folder / f"hash-{setting.name.removeprefix('hashee-')}.json"
            build = ["build-hash", "--method", setting.hash, "--model", config.model, *hash_data,
                     "--max-seq-length", str(training.max_seq_length), "--seed", str(training.seed), "-o", str(table)]
            if setting.exit_layers:
                build += ["--exit-layers", _csv(setting.exit_layers)]
            if setting.num_buckets:
                build += ["--num-buckets", str(setting.num_buckets)]
            steps.append(Step(task_name, f"hash {setting.name}", build + replace, [table]))
            runs.append((setting.name, ["--hash-table", str(table)], [table]))

        methods = config.methods
        if "full" in chosen:
            runs.insert(0, ("full", ["--method", "full"], []))
        if "static" in chosen:
            depths = ["--depths", _csv(methods.static.depths)] if methods.static.depths else []
            runs.append(("static", ["--method", "static", *depths], []))
        if "deebert" in chosen:
            first_stage = [folder / "full"] if methods.deebert.init_from_full else []
            init = ["--init-from", str(folder / "full")] if first_stage else []
            runs.append(("deebert", ["--method", "deebert", *init], first_stage))
        if "pabee" in chosen:
            runs.append(("pabee", ["--method", "pabee"], []))

        for name, options, inputs in runs:
            argv = ["finetune", *options, *train, "-o", str(folder / name), *replace]
            steps.append(Step(task_name, f"finetune {name}", argv, [folder / name], inputs))

        evaluation = config.evaluation
        for name, _, _ in runs:
            output = folder / f"metrics-{name}.csv"
            evaluate = ["evaluate", str(folder / name), "--split", evaluation.split, "--batch-size", str(evaluation.batch_size), "-o", str(output), "--overwrite"]
            if evaluation.limit is not None:
                evaluate += ["--limit", str(evaluation.limit)]
            if name == "deebert" and methods.deebert.thresholds:
                evaluate += ["--thresholds", _csv(methods.deebert.thresholds)]
            if name == "pabee":
                if methods.pabee.patience:
                    evaluate += ["--patience", _csv(methods.pabee.patience)]
                evaluate += ["--tolerance", f"{methods.pabee.tolerance:g}"]
            if name in ("deebert", "pabee") and evaluation.early_exit:
                evaluate.append("--early-exit")
            steps.append(Step(task_name, f"evaluate {name}", evaluate, [output], [folder / name], always=overwrite))
            metrics.append(output)
            if evaluation.count_limit is not None:
                counts = folder / f"flops-{name}.csv"
                # The same settings as the sweep, so that every metrics row gets its count.
                sweep = [item for option in ("--thresholds", "--patience", "--tolerance") if option in evaluate
                         for item in evaluate[evaluate.index(option):evaluate.index(option) + 2]]
                count = ["count-flops", str(folder / name), "--split", evaluation.split, "--limit", str(evaluation.count_limit),
                         *sweep, "-o", str(counts), "--overwrite"]
                steps.append(Step(task_name, f"count {name}", count, [counts], [folder / name], always=overwrite))
                metrics.append(counts)

    references = [reference for reference in config.report.references if reference in _curves(config)]
    if selected_methods:
        # A curve of a method left out of the selection has no rows to compare against.
        hash_curves = {f"hashee-{setting.hash}" for setting in config.methods.hashee if setting.name in selected_methods}
        chosen_curves = {"static", *selected_methods} | hash_curves
        references = [reference for reference in references if reference in chosen_curves]
    report = ["report", *map(str, metrics), *(item for reference in references for item in ("--reference", reference)),
              "-o", str(root / "report"), "--overwrite"]
    steps.append(Step("all", "report", report, [root / "report" / "report.md"], always=True))
    return steps


def _curves(config: ExperimentConfig) -> set[str]:
    names = {"static"} | set(config.methods.names())
    names |= {f"hashee-{setting.hash}" for setting in config.methods.hashee}
    return names


def check_resolved_config(config_data: dict, output_dir: Path, overwrite: bool) -> None:
    """Raise when ``output_dir`` contains results of a different config, unless ``overwrite``."""
    saved = output_dir / RESOLVED_CONFIG
    if saved.is_file() and not overwrite:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        if previous != config_data:
            raise HasheeError(
                f"{output_dir} contains results of a different config ({saved}); choose another output_dir "
                "or pass --overwrite to redo every step"
            )


def save_resolved_config(config_data: dict, output_dir: Path) -> None:
    atomic.write_text(output_dir / RESOLVED_CONFIG, yaml.safe_dump(config_data, sort_keys=False))


def run_step(step: Step, on_start: Callable[[Step], None] | None = None) -> None:
    """Run one step as a `hashee` subprocess that shares this process's terminal; raise on failure."""
    if on_start is not None:
        on_start(step)
    completed = subprocess.run([sys.executable, "-m", "hashee_cli", *step.argv], check=False)
    if completed.returncode != 0:
        raise HasheeError(
            f"step '{step.name}' of {step.task} failed with exit status {completed.returncode}; fix the cause shown "
            "above and run the experiment again (finished steps are reused)"
        )
