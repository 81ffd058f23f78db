"""`hashee experiment`: run an experiment config end to end (hash tables, fine-tuning, evaluation, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hashee_cli.cli.common import emit_json, handle_errors, info, state
from hashee_cli.experiments import check_resolved_config, load_config, plan_experiment, run_step, save_resolved_config


@handle_errors
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML), e.g. experiments/comparison-cpu.yaml.")],
    dry_run: Annotated[bool, typer.Option(help="Print the commands and which of them are already done; run nothing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo every step, replacing earlier results.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder in the ELUE layout, replacing the config's data_dir.")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Results folder, replacing the config's output_dir.")
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="Run only this task of the config; repeat for several.")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="Run only this method of the config (full, static, deebert, pabee, hashee-<hash>-<layers>); repeat for several."),
    ] = None,
) -> None:
    """Run every step of an experiment config; steps whose outputs exist and are up to date are reused."""
    parsed, raw = load_config(config)
    # Overrides count as part of the config, so a run with other folders is not mixed with old results.
    if data_dir is not None:
        parsed.data_dir = raw["data_dir"] = str(data_dir)
    if output_dir is not None:
        parsed.output_dir = raw["output_dir"] = str(output_dir)
    steps = plan_experiment(parsed, overwrite, tasks=task, methods=method)
    output_dir = Path(parsed.output_dir)

    if dry_run:
        if state.json:
            emit_json([{"task": step.task, "step": step.name, "command": step.command(), "done": step.done()} for step in steps])
            return
        for step in steps:
            status = "done" if step.done() else "to run"
            info(escape(f"[{status}] {step.command()}"))
        return

    check_resolved_config(raw, output_dir, overwrite)
    save_resolved_config(raw, output_dir)
    ran = 0
    for step in steps:
        if step.done():
            info(escape(f"Reusing {', '.join(map(str, step.outputs))} ({step.task}: {step.name})"))
            continue
        run_step(step, on_start=lambda current: info(escape(f"\n$ {current.command()}")))
        ran += 1
    if state.json:
        emit_json({"steps": len(steps), "ran": ran, "report": str(output_dir / "report" / "report.md")})
        return
    info(f"Ran {ran} of {len(steps)} steps. Report: {output_dir / 'report' / 'report.md'}")
