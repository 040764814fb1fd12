# SPDX-License-Identifier: Apache-2.0
"""The ``voxrelay`` command: a thin root that mounts each room's commands.

The rooms above this floor (``orchestrator``, ``transceiver``, ``lab``)
declare their commands as entry points in the ``voxrelay.commands`` group
(pyproject.toml); this module names none of them. A command's module is
imported only when that command is listed or called, and an import that
fails (bcc or a room's dependency missing) makes that one command say what is
missing instead of taking the whole CLI down.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

ENTRY_POINT_GROUP = "voxrelay.commands"


def command_entry_points() -> dict[str, EntryPoint]:
    """Every installed room's commands, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(name: str, ep: EntryPoint) -> click.Command:
    try:
        command = ep.load()
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"'{name}' is unavailable: cannot import {exc.name!r}. "
            "Run scripts/setup.sh (or 'make setup') to install voxrelay's dependencies."
        ) from None
    if not isinstance(command, click.Command):
        raise click.ClickException(f"'{name}' is not a command in this build ({ep.value})")
    return command


class EntryPointGroup(click.Group):
    """A click group whose subcommands are the ``voxrelay.commands`` entry points."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(command_entry_points())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ep = command_entry_points().get(cmd_name)
        return None if ep is None else _load(cmd_name, ep)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name, ep in sorted(command_entry_points().items()):
            try:
                help_text = _load(name, ep).get_short_help_str(limit=80)
            except click.ClickException as exc:
                help_text = exc.message
            rows.append((name, help_text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=EntryPointGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="voxrelay")
def cli() -> None:
    """voxrelay: a stateless XDP relay in front of aiortc transceivers for voice AI.

    \b
    Start with:
      voxrelay demo            a voice call through the relay, in namespaces
      voxrelay relay status    what is loaded on this host
      voxrelay maps stats      packets by verdict and drop reason
    """


def main() -> None:
    cli(prog_name="voxrelay")


if __name__ == "__main__":
    main()
