"""The registry of `lbdn`'s client commands: each is a plain function, registered with `@command`
beside the function that adds its arguments, in the module of its topic (jobs, models, paper).

Adding a command is one decorated function: `client.cli.parser()` builds a subparser per registered
command, in registration order, and `client.cli.main()` calls the one that was chosen.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from client.http import Client
from client.ui import Ui

# (client, output, parsed arguments) -> exit code; `a.rest` holds the command line after the command
Handler = Callable[[Client, Ui, argparse.Namespace], int]
AddArgs = Callable[[argparse.ArgumentParser], None]
# Command groups (`lbdn paper list|run|report`): name -> (help, dest of the chosen subcommand)
GROUPS = {"paper": ("the paper's experiments as presets", "paper_cmd")}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler
    add_args: AddArgs | None = None
    description: str | None = None
    group: str | None = None  # a key of GROUPS: `lbdn GROUP NAME`


REGISTRY: list[Command] = []


def command(
    name: str, help: str, add_args: AddArgs | None = None, *, description: str | None = None, group: str | None = None
) -> Callable[[Handler], Handler]:
    """Register the decorated function as `lbdn [GROUP] NAME`, its arguments added by `add_args`."""

    def register(run: Handler) -> Handler:
        REGISTRY.append(Command(name, help, run, add_args, description, group))
        return run

    return register
