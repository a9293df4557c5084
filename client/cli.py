"""The client commands of `lbdn`: submit, jobs, show, logs, cancel, delete, pull, models, evaluate,
certify, export, sweeps and paper (list / run / report).

Each command is a plain function registered with `@command` beside its arguments (client.commands:
jobs, models, paper); this module builds the parser from the registry and runs the chosen one. Its
exit code follows the server's problem+json status (the table is in client.ui). With --json,
answers (and problems) are printed as JSON on stdout for scripts.
"""

from __future__ import annotations

import argparse
import sys

from client.commands import GROUPS, REGISTRY, jobs, models, paper
from client.http import ApiError, Client
from client.ui import EXIT_USAGE, Ui, UsageError, exit_code

MODULES = (jobs, models, paper)  # imported for their @command registrations, in the order of `lbdn --help`


def _common() -> argparse.ArgumentParser:
    """--json and --url, accepted before and after the command."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's copy of these options must not reset a value given before the subcommand
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print answers as JSON (for scripts)"
    )
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help="the service (default $LBDN_URL or http://127.0.0.1:8000)"
    )
    return common


def parser() -> argparse.ArgumentParser:
    """`lbdn`'s client parser: one subparser per registered command; `handler` is the chosen function."""
    common = _common()
    p = argparse.ArgumentParser(
        prog="lbdn", description="Client of the lbdn service ($LBDN_URL, $LBDN_API_KEY)", parents=[common]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in REGISTRY:
        where = sub
        if cmd.group:
            if cmd.group not in groups:
                text, dest = GROUPS[cmd.group]
                group = sub.add_parser(cmd.group, parents=[common], help=text)
                groups[cmd.group] = group.add_subparsers(dest=dest, required=True)
            where = groups[cmd.group]
        s = where.add_parser(cmd.name, parents=[common], help=cmd.help, description=cmd.description)
        if cmd.add_args:
            cmd.add_args(s)
        s.set_defaults(handler=cmd.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    a.rest = argv[1:]  # submit tells a spec file from experiment flags by the raw command line
    ui = Ui(getattr(a, "json", False))
    try:
        with Client(getattr(a, "url", None)) as c:
            return int(a.handler(c, ui, a))
    except ApiError as e:
        if ui.as_json:
            ui.json(e.body)
        where = f"{e.status} {e.title}: " if e.status else ""
        print(f"lbdn: {where}{e.detail}", file=sys.stderr)  # plain: a message must not be re-wrapped
        return exit_code(e.status)
    except UsageError as e:
        print(f"lbdn: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
