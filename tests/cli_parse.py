"""Parse a ``tuner ...`` command line with the real Typer app, without running it: the
commands that docker-compose.yml, the Dockerfile, Slurm scripts and Kubernetes manifests
hold must be ones the CLI accepts (options, types, arguments)."""

from __future__ import annotations

from typing import Any

import typer

from tuner.cli import app


def cli_command(argv: list[str]) -> typer.core.TyperCommand | typer.core.TyperGroup:
    """Parse ``tuner ARGS...`` with the real app; returns the command that would run (a
    group for ``tuner --help``). Raises click's UsageError / BadParameter when the command
    line would be refused."""
    assert argv[0] == "tuner", argv
    return _resolve(typer.main.get_command(app), "tuner", argv[1:], None)


def _resolve(command: Any, name: str, args: list[str], parent: Any) -> Any:
    if isinstance(command, typer.core.TyperGroup):  # `tuner launch slurm ...`: down to the command
        if args in ([], ["--help"]):
            return command
        ctx = command.make_context(name, [args[0]], parent=parent)
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"no command `{name} {args[0]}`"
        return _resolve(sub, args[0], args[1:], ctx)
    command.make_context(name, args, parent=parent)
    return command


def envvars(command: Any) -> set[str]:
    return {p.envvar for p in command.params if isinstance(p.envvar, str)}
