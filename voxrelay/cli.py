"""The ``voxrelay`` command: a thin root that mounts each room's commands.

Subcommands are imported only when they are called, so that ``voxrelay
--help`` and ``voxrelay token ...`` work on a machine without bcc, and a
broken import in one room cannot take the whole CLI down.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command or group, with a one-line help
# shown by ``voxrelay --help`` without importing the module.
COMMANDS: dict[str, tuple[str, str]] = {
    "relay": ("orchestrator.cli:relay", "Load, replace, unload and inspect the XDP relay."),
    "maps": ("orchestrator.cli:maps", "Show the relay's BPF maps (transceivers, flows, keys, stats)."),
    "transceivers": ("orchestrator.cli:transceivers", "Drain, undrain or remove a transceiver."),
    "keys": ("orchestrator.cli:keys", "Rotate the routing-token keys."),
    "token": ("orchestrator.cli:token", "Mint or inspect a routing token (a server ICE ufrag)."),
    "probe": ("orchestrator.cli:probe", "Send a STUN probe through relay -> transceiver; exit 1 if broken."),
    "orchestrator": ("orchestrator.cli:orchestrator", "Run the orchestrator: directory, map sync, /metrics."),
    "transceiver": ("transceiver.cli:transceiver", "Run a transceiver: HTTP signaling and aiortc calls."),
    "model": ("transceiver.model.cli:model", "Run the default offline voice model (VAD, ASR, reply, TTS)."),
    "demo": ("voxrelay.demo:demo", "Place a voice call through the relay across namespaces."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise click.ClickException(
                f"'{name}' is unavailable: cannot import {exc.name!r}. "
                "Run scripts/setup.sh (or 'make setup') to install voxrelay's dependencies."
            ) from None
        command = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            raise click.ClickException(f"'{name}' is not implemented in this build ({target[0]})")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
