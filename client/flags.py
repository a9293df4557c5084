"""The experiment flags of `python -m lipcore` (the paper's main.py), for `lbdn submit`.

A copy of the spec-bearing part of lipcore's parser, because the client imports no server code;
tests/service/test_client.py checks flag for flag (names, defaults, resulting spec) that it stays
the same as `lipcore.cli`. The server resolves and validates the spec (ExperimentSpec), so nothing
here repeats those rules. Flags of the local command that concern the machine it runs on
(--root_dir, --data_dir, --device, --resume, --download, --checkpoint_every, --num_workers) have no
meaning for a job on the server and are not accepted.
"""

from __future__ import annotations

import argparse
from typing import Any

STORE_TRUE = ("LLN", "normalized", "cert_acc")  # spec fields lln, normalized, cert_acc


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `python -m lipcore` that describe the experiment, with its defaults."""
    g = p.add_argument_group("experiment (the flags of python -m lipcore)")
    g.add_argument("-m", "--model", default="Resnet", help="DNN, KWL, Resnet or Toy (default Resnet)")
    g.add_argument(
        "-d", "--dataset", default="tiny_imagenet", help="cifar10, cifar100, tiny_imagenet, square_wave or image_folder"
    )
    g.add_argument("-g", "--gamma", type=float, default=1.0, help="network Lipschitz bound (l2)")
    g.add_argument("-s", "--seed", type=int, default=123)
    g.add_argument("-e", "--epochs", type=int, default=100)
    g.add_argument("--layer", default=None, help="Sandwich, Orthogon, Aol, SLL or Plain (default: the model's)")
    g.add_argument("--scale", default=None, help="small, medium, large or xlarge (default: the model's)")
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    g.add_argument("--loss", default=None, help="xent, multimargin or mse (default: xent; Toy: mse)")
    g.add_argument("--train_batch_size", type=int, default=256)
    g.add_argument("--test_batch_size", type=int, default=256)
    g.add_argument("--LLN", action="store_true", help="last-layer normalisation (DNN, Resnet)")
    g.add_argument("--normalized", action="store_true", help="divide inputs by the dataset std")
    g.add_argument("--cert_acc", action="store_true", help="record certified accuracy every epoch")
    g.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the training step (auto: on for CUDA, off on CPU)",
    )
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="training arithmetic (bf16 autocast); certificates are always full precision",
    )
    g.add_argument(
        "--data_path",
        default=None,
        help="image_folder: folder holding train/ (and test/), inside the server's data dir",
    )


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ExperimentSpec fields of parsed flags, exactly as lipcore.cli.spec_from_args builds them."""
    fields: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "gamma": args.gamma,
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "train_batch_size": args.train_batch_size,
        "test_batch_size": args.test_batch_size,
        "compile": args.compile,
        "precision": args.precision,
    }
    optional = {"layer": args.layer, "scale": args.scale, "loss": args.loss, "data_path": args.data_path}
    fields.update({k: v for k, v in optional.items() if v is not None})
    # store_true flags only speak when given, so a model's forced setting (DNN: LLN) is not contradicted
    fields.update({flag.lower(): True for flag in STORE_TRUE if getattr(args, flag)})
    return fields


def given(argv: list[str]) -> bool:
    """True when any experiment flag appears in argv (so a spec file and flags are not mixed)."""
    p = argparse.ArgumentParser(add_help=False)
    add_spec_flags(p)
    names = {s for a in p._actions for s in a.option_strings}
    return any(tok.split("=")[0] in names for tok in argv)
