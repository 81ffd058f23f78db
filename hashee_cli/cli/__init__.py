"""The `hashee` command line: a thin layer that parses options, calls the library and renders results."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from hashee_cli import __version__
from hashee_cli.cli import build_hash, count_flops, evaluate, finetune, learnability, report
from hashee_cli.cli import experiment
from hashee_cli.cli.common import state

app = typer.Typer(
    name="hashee",
    help="Hash-based early exiting (HashEE) for transformers: build hash tables, fine-tune, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hashee {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout instead of tables.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    state.debug = debug
    state.json = json_output


app.command("build-hash")(build_hash.build_hash)
app.command("finetune")(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("count-flops")(count_flops.count_flops)
app.command("experiment")(experiment.experiment)
app.command("learnability-probe")(learnability.learnability_probe)
app.command("build-difficulty-labels")(learnability.build_difficulty_labels)


def _quiet_libraries() -> None:
    """Silence library chatter (load reports, download bars) so the CLI output stays readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main() -> None:
    _quiet_libraries()
    app()
