"""Every command of the paper's README runs as `python -m lipcore ...` on tiny data in the real formats.

Commands come from ../shared/paper-commands.txt. Each section ("family") is one test: its
placeholders take their first listed value (mode: train, then eval), and the test appends only
what makes it small: 1-2 epochs, tiny batches, our data/root directories and, for eval, a few
AutoAttack examples. Flags given twice are fine: argparse keeps the last.

A command whose experiment differs from one already run in this module only by its seed, gamma or
epochs (Fig. 5 repeats Fig. 4's models with other seeds and gammas) takes the same code path: it is
parsed into its spec and checked, not trained again (that was 10 of the 34 training runs).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lipcore.cli import main, parser, spec_from_args
from lipcore.rundir import EVAL, EVAL_TOY, METRICS, MODEL
from lipcore.spec import ExperimentSpec
from tests.conftest import SHARED
from tests.fakedata import write_cifar10, write_cifar100, write_tiny_imagenet

COMMANDS = SHARED / "paper-commands.txt"


@dataclass
class Family:
    title: str
    values: dict[str, list[str]]
    commands: list[str] = field(default_factory=list)


def families() -> list[Family]:
    out: list[Family] = []
    for line in COMMANDS.read_text().splitlines():
        line = line.strip()
        if line.startswith("- "):
            title, _, rest = line[2:].partition(":")
            values = {k: [x.strip() for x in v.split(",")] for k, v in re.findall(r"(\w)=\[([^\]]*)\]", rest)}
            out.append(Family(title.strip(), values))
        elif line.startswith("python main.py"):
            out[-1].commands.append(line)
    return [f for f in out if f.commands]


FAMILIES = families()


def expand(command: str, values: dict[str, list[str]], mode: str) -> list[str]:
    argv = shlex.split(command)[2:]  # drop "python main.py"
    subst = {
        "m": mode,
        "g": values.get("g", ["1"])[0],
        "s": values.get("s", ["123"])[0],
        "c": values.get("c", ["small"])[0],
    }
    return [re.sub(r"\[(\w)\]", lambda m: subst[m.group(1)], a) for a in argv]


def test_every_section_of_the_paper_commands_is_covered() -> None:
    lines = [ln for ln in COMMANDS.read_text().splitlines() if ln.startswith("python main.py")]
    assert len(FAMILIES) == 9  # Toy; Fig. 4 and 5, Tab. 2 and Tab. 3-4, each on two datasets
    assert sum(len(f.commands) for f in FAMILIES) == len(lines) == 34


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    # One training step per epoch with batches of 8: the large models cost seconds per step on a CPU.
    write_cifar10(d, per_batch=2, n_test=4)  # 10 training images
    write_cifar100(d, n=8, n_test=4)
    write_tiny_imagenet(d)  # 9 training images, 4 validation images
    return d


@pytest.fixture(scope="module")
def experiments_run() -> set[str]:
    """The experiments (specs up to seed, gamma and epochs) trained so far by this module's tests."""
    return set()


def experiment(spec: ExperimentSpec) -> str:
    """`spec` up to what changes no code path: its seed, the value of its bound, its epochs."""
    gamma = None if spec.gamma is None else 1.0
    return spec.model_copy(update={"seed": 0, "gamma": gamma, "epochs": 1}).to_json()


@pytest.mark.slow  # the paper's large models, trained, certified in float64 and attacked on the CPU
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.title)
def test_paper_command_family_runs(
    family: Family, data_dir: Path, tmp_path: Path, capsys, experiments_run: set[str]
) -> None:
    root = str(tmp_path / "saved_models")
    small = ["--data_dir", str(data_dir), "--root_dir", root, "--train_batch_size", "8", "--test_batch_size", "8"]
    for command in family.commands:
        spec = spec_from_args(parser().parse_args(expand(command, family.values, "train") + small))
        assert spec.dataset in command and spec.model in command  # the command's own experiment
        if experiment(spec) in experiments_run:
            continue  # the same code path ran already (see the module doc)
        experiments_run.add(experiment(spec))
        modes = family.values.get("m", ["train"]) if "[m]" in command else ["train"]
        for mode in modes:
            argv = expand(command, family.values, mode)
            toy = "Toy" in argv
            # Toy runs keep the paper's 10-restart Lipschitz estimate; image models skip it on the CPU
            extra = ["--lip-restarts", "10" if toy else "0"]
            extra += ["--epochs", "20" if toy else "1"] if mode == "train" else ["--n-examples", "1"]
            assert main(argv + small + extra) == 0, (argv, capsys.readouterr().err)
            spec = spec_from_args(parser().parse_args(argv + small + extra))
            run = Path(spec.train_dir(root))
            assert (run / MODEL).is_file()
            if mode == "train":
                assert len(json.loads((run / METRICS).read_text())) == spec.epochs
            elif toy:
                result = json.loads((run / EVAL_TOY).read_text())
                assert 0 < result["tightness"] <= 1 + 1e-4
                assert len(result["layers"]) == 10
            else:
                result = json.loads((run / EVAL).read_text())
                assert set(result["autoattack_acc"]) == {"36", "72", "108"}
                assert all(v == 0 for v in result["certificate_violations"].values())
        # A large model's run (weights, Adam state, checkpoint) is up to a GB: a family kept them all
        # (4.7 GB) and a full test run 17 GB, enough to fill a CI machine's disk. Checked, then gone.
        shutil.rmtree(run, ignore_errors=True)


def test_invalid_command_line_is_a_clear_usage_error(capsys) -> None:
    assert main(["--model", "KWL", "--layer", "SLL", "--dataset", "cifar10"]) == 2
    assert "layer 'SLL' is not defined for model KWL" in capsys.readouterr().err


def test_missing_data_names_the_directory(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "--model",
            "KWL",
            "--layer",
            "Sandwich",
            "--dataset",
            "cifar100",
            "--epochs",
            "1",
            "--data_dir",
            str(tmp_path),
            "--root_dir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 1
    assert str(tmp_path / "cifar-100-python") in capsys.readouterr().err


def test_eval_without_training_says_what_to_do(tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "--mode",
                "eval",
                "--model",
                "Toy",
                "--layer",
                "Aol",
                "--dataset",
                "square_wave",
                "--root_dir",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "--mode train first" in capsys.readouterr().err
