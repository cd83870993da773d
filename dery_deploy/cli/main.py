"""The `dery` command. One module per sub-command; this file wires them and turns user errors
into one line on stderr and exit code 2, with no traceback: a `DeryError` (a bad value, a missing
file) and a usage error (a missing or unknown option, a bad value, an unknown sub-command). Any
other exception is a bug and keeps its full traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from dery_deploy.cli import bench, predict
from dery_deploy.errors import DeryError

# commands that run a shipped package with its runtime alone: `dery predict` and `dery bench` build an app
# of these only, so they start without importing torch (and work where only the base install is)
RUNTIME_ONLY = {"predict": predict, "bench": bench}


def make_app(full: bool = True) -> typer.Typer:
    """The `dery` app: every command, or (full=False) the runtime-only ones."""
    app = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        help="Deep Model Reassembly for one device under a latency budget: profile, assemble, fine-tune, ship.",
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    if full:
        from dery_deploy.cli import (
            assemble,
            devices,
            evaluate,
            export,
            finetune,
            partition,
            profile,
            run,
            similarity,
            zoo,
        )

        app.add_typer(zoo.app, name="zoo")
        for mod in (devices, similarity, partition, profile, assemble, finetune, evaluate, export, run):
            mod.register(app)
    for mod in RUNTIME_ONLY.values():
        mod.register(app)
    return app


def _show_version(value: bool) -> None:
    if value:
        from dery_deploy import __version__

        typer.echo(f"dery {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Deep Model Reassembly for one device under a latency budget: profile, assemble, fine-tune, ship."""


def _click_errors() -> tuple[tuple[type[Any], ...], tuple[type[BaseException], ...], tuple[type[Any], ...]]:
    """(usage/other click errors, aborts, exits) of the click typer runs on: its own vendored copy
    (typer >= 0.2x) and the `click` package (older typer) alike."""
    # type[Any] for errors and exits: their handlers read click's own attributes (exit_code)
    errors: list[type[Any]] = []
    aborts: list[type[BaseException]] = []
    exits: list[type[Any]] = []
    for modname in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            m = __import__(modname, fromlist=["_"])
        except ImportError:
            continue
        for name, bucket in (("ClickException", errors), ("Abort", aborts), ("Exit", exits)):
            if hasattr(m, name):
                bucket.append(getattr(m, name))
    return tuple(errors), tuple(aborts), tuple(exits)


def _given_value(e, argv: list[str]) -> str | None:
    """What the user typed for the option a bad-parameter error is about (click does not always say)."""
    opts = getattr(getattr(e, "param", None), "opts", None) or []
    for i, tok in enumerate(argv):
        for o in opts:
            if tok == o and i + 1 < len(argv):
                return argv[i + 1]
            if tok.startswith(o + "="):
                return tok[len(o) + 1 :]
    return None


def _one_line(e, argv: list[str]) -> str:
    """A click error as one line naming the bad value and where to look for the fix."""
    msg = " ".join(e.format_message().split())
    given = _given_value(e, argv)
    if given is not None and repr(given) not in msg:
        msg = msg.rstrip(".") + f" (got {given!r})"
    ctx = getattr(e, "ctx", None)
    if ctx is not None and getattr(e, "exit_code", 1) == 2:  # a usage error
        msg = (msg if msg.endswith(("?", "!")) else msg.rstrip(".") + ".") + f" See `{ctx.command_path} --help`."
    return msg


COMMANDS = {"similarity", "partition", "profile", "assemble", "finetune", "evaluate", "export", "run", "zoo"}


def _tagged(e: DeryError, args: list[str]) -> str:
    """The error's line, tagged with the command the user ran where its stage is another command's (`dery
    finetune` reads a plan as `dery assemble` writes it: "[assemble] plan file not found" read as the wrong
    command). `dery run`'s tags name its stages, which is where it failed."""
    cmd = args[0] if args else None
    if cmd in COMMANDS and cmd != "run" and e.stage in COMMANDS and e.stage != cmd:
        return f"[{cmd}] {e.args[0]}"
    return str(e)


def cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this; `main` exits with it)."""
    # torch warns at import that a CPU-only machine has no CUDA runtime; that is not news to a user
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    errors, aborts, exits = _click_errors()
    # a tuple in a variable, not `except (*aborts, KeyboardInterrupt)`: mypy cannot type a starred except clause
    interrupts: tuple[type[BaseException], ...] = (*aborts, KeyboardInterrupt)
    args = sys.argv[1:] if argv is None else argv
    light = bool(args) and args[0] in RUNTIME_ONLY
    try:
        code = make_app(full=not light)(args=argv, prog_name="dery", standalone_mode=False)
    except DeryError as e:
        typer.secho(f"error: {_tagged(e, args)}", fg="red", err=True)
        return 2
    except exits as e:
        return e.exit_code
    except errors as e:
        if not e.format_message().strip():  # a command given without its subcommand: its help was the answer
            return 0
        typer.secho(f"error: {_one_line(e, sys.argv[1:] if argv is None else argv)}", fg="red", err=True)
        return 2 if getattr(e, "exit_code", 1) in (1, 2) else e.exit_code
    except interrupts:
        typer.secho("interrupted; finished work is kept, rerun to resume", fg="yellow", err=True)
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
