"""The experiment flags of `lbdn submit`: those of `python -m lipcore` (the paper's main.py).

Both command lines generate them from the spec's fields (lipcore.catalog.flags), so a new spec
field is a flag here too. The client imports the torch-free catalog (pydantic only, no server code,
tests/service/test_client.py checks it). The server resolves and validates the spec
(ExperimentSpec), so nothing here repeats those rules. Flags of the local command that concern the
machine it runs on (--root_dir, --data_dir, --device, --resume, --download, --checkpoint_every,
--num_workers) have no meaning for a job on the server and are not accepted; `--data_path` names a
folder inside the server's data dir.
"""

from __future__ import annotations

import argparse

from lipcore.catalog.flags import add_spec_flags as _add
from lipcore.catalog.flags import flag_names, spec_fields

__all__ = ["add_spec_flags", "given", "spec_fields"]


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `python -m lipcore` that describe the experiment, in their own group."""
    _add(p.add_argument_group("experiment (the flags of python -m lipcore)"))


def given(argv: list[str]) -> bool:
    """True when any experiment flag appears in argv (so a spec file and flags are not mixed)."""
    names = flag_names()
    return any(tok.split("=")[0] in names for tok in argv)
