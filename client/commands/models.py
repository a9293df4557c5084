"""`lbdn models | import | evaluate | certify | export`: trained models, their attacks and certificates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client.commands import command
from client.commands.jobs import follow_job
from client.http import Client
from client.ui import EXIT_OK, Ui, UsageError


def _models_args(m: argparse.ArgumentParser) -> None:
    m.add_argument("--limit", type=int, default=50)


@command("models", "your trained models", _models_args)
def cmd_models(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from rich.table import Table

    from client.render import describe, fmt

    items = c.models(a.limit)
    if ui.as_json:
        ui.json(items)
        return EXIT_OK
    t = Table("model", "experiment", "gamma", "clean acc %", "certified acc % (36/72/108)")
    for m in items:
        cert = m.get("certified_acc") or {}
        t.add_row(
            m["id"],
            describe(m["spec"]),
            fmt(m.get("gamma"), 3),
            fmt(m.get("clean_acc"), 2),
            "/".join(fmt(cert.get(k), 1) for k in ("36", "72", "108")),
        )
    ui.out.print(t if items else "no trained models")
    return EXIT_OK


def _import_args(im: argparse.ArgumentParser) -> None:
    im.add_argument("checkpoint", type=Path, help="the paper's model.ckpt, or a model.safetensors")
    im.add_argument(
        "--spec",
        required=True,
        help='the spec it was trained under: a JSON file or JSON text, e.g. \'{"model": "KWL", "layer": "Sandwich", '
        '"gamma": 2, "dataset": "cifar10"}\'',
    )
    im.add_argument("--name", default=None, help="what you call the model (set on its job)")
    im.add_argument("--tag", action="append", default=None, help="a tag (repeat for more)")


def _spec_arg(text: str) -> dict[str, Any]:
    """--spec as a file name or as JSON text."""
    import json

    try:
        raw = Path(text).read_text() if not text.lstrip().startswith("{") else text
        spec = json.loads(raw)
    except (OSError, ValueError) as e:
        raise UsageError(f"--spec: not a JSON file or JSON text ({e})") from None
    if not isinstance(spec, dict):
        raise UsageError("--spec: expected a JSON object (ExperimentSpec fields)")
    return spec


@command("import", "import a checkpoint as a model you can certify, evaluate and export", _import_args)
def cmd_import(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    if not a.checkpoint.is_file():
        raise UsageError(f"no file {a.checkpoint}")
    model = c.import_model(a.checkpoint, _spec_arg(a.spec))
    labels = {k: v for k, v in (("name", a.name), ("tags", a.tag)) if v}
    if labels:
        c.label(model["id"], **labels)
    if ui.as_json:
        ui.json(model)
    else:
        ui.out.print(
            f"imported {a.checkpoint.name} as {model['id']}; lbdn certify {model['id']} FILE..., lbdn show {model['id']}"
        )
    return EXIT_OK


def _evaluate_args(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("model")
    ev.add_argument("--eps", type=int, nargs="+", default=[36, 72, 108], help="l2 radii in 1/255 units (pixel space)")
    ev.add_argument("--version", default="standard", choices=["standard", "plus", "rand", "custom"])
    ev.add_argument("--attacks", nargs="+", default=None, help="with --version custom: e.g. apgd-ce square")
    ev.add_argument("--n-examples", dest="n_examples", type=int, default=1000, help="test inputs attacked")
    ev.add_argument("--follow", "-f", action="store_true")


@command("evaluate", "AutoAttack beside the certificates of a trained model", _evaluate_args)
def cmd_evaluate(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    attack: dict[str, Any] = {"eps": a.eps, "version": a.version, "n_examples": a.n_examples}
    if a.attacks:
        attack["attacks"] = a.attacks
    job = c.submit({"kind": "evaluate", "model_id": a.model, "attack": attack})
    if not a.follow:
        ui.json(job) if ui.as_json else ui.out.print(
            f"submitted {job['id']} (evaluate {a.model}); lbdn show {job['id']}"
        )
        return EXIT_OK
    return follow_job(c, ui, job["id"])


def _certify_args(ce: argparse.ArgumentParser) -> None:
    ce.add_argument("model")
    ce.add_argument("files", nargs="+", help="PNG/JPEG of the model's input size, or .npy arrays")
    ce.add_argument("--attack", action="store_true", help="also search the smallest adversarial perturbation")
    ce.add_argument(
        "--scale",
        choices=["pixel", "model"],
        default="pixel",
        help="the space of the inputs' values: pixel = image pixels in [0, 1] (the server normalises them "
        "with the model's mean/std; PNG/JPEG are always pixels), model = already normalised model-input "
        "values (.npy of the network's own input space). Default: pixel",
    )


@command("certify", "certified l2 radii of image / .npy files", _certify_args)
def cmd_certify(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import certify_table

    paths = [Path(f) for f in a.files]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"no file {p}")
    answer = c.certify(a.model, paths, attack=a.attack, scale=a.scale)
    ui.json(answer) if ui.as_json else ui.out.print(certify_table(answer, input_names(paths, answer["input_shape"])))
    return EXIT_OK


def input_names(paths: list[Path], input_shape: list[int]) -> list[str]:
    """The name of each certified input, in the server's order: an image is one input, a .npy
    holding a batch (n, *input_shape) is n inputs, named file.npy[i]. Files go by their name alone
    when no two share one (a deep folder's path would take the table's width), else by their path."""
    import numpy as np

    short = len({p.name for p in paths}) == len(paths)
    names = []
    for p in paths:
        label = p.name if short else str(p)
        shape: tuple[int, ...] = ()
        if p.suffix.lower() == ".npy":
            with p.open("rb") as f:  # the header only: never the data, never a pickle
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape = read(f)[0]
        if len(shape) == len(input_shape) + 1:
            names += [f"{label}[{i}]" for i in range(shape[0])]
        else:
            names.append(label)
    return names


def _export_args(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("model")
    ex.add_argument("--format", choices=["onnx", "torch"], default="onnx")
    ex.add_argument("-o", "--output", help="file to write (default MODEL.onnx / MODEL.pt2)")


@command("export", "a model as ONNX or a torch.export program, with certify metadata", _export_args)
def cmd_export(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    out = Path(a.output or f"{a.model}.{ {'onnx': 'onnx', 'torch': 'pt2'}[a.format] }")
    c.export(a.model, a.format, out)
    ui.json({"model": a.model, "format": a.format, "path": str(out)}) if ui.as_json else ui.say(f"wrote {out}")
    return EXIT_OK
