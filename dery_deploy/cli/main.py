"""The `dery` command. One module per sub-command; this file wires them and turns user errors
(`DeryError`) into one line on stderr and exit code 2, with no traceback."""

from __future__ import annotations

import sys

import typer

from dery_deploy.errors import DeryError

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Deep Model Reassembly for one device under a latency budget: profile, assemble, fine-tune, ship.",
                  pretty_exceptions_enable=False)


def _register() -> None:
    from dery_deploy.cli import (assemble, devices, evaluate, export, finetune, partition, profile, run,
                                 similarity, zoo)

    app.add_typer(zoo.app, name="zoo")
    for mod in (devices, similarity, partition, profile, assemble, finetune, evaluate, export, run):
        mod.register(app)


def cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this; `main` exits with it)."""
    import logging

    import click

    # torch warns at import that a CPU-only machine has no CUDA runtime; that is not news to a user
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    if not app.registered_groups:
        _register()
    try:
        code = app(args=argv, prog_name="dery", standalone_mode=False)
    except DeryError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        return 2
    except click.exceptions.ClickException as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.secho("interrupted; finished work is kept, rerun to resume", fg="yellow", err=True)
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
