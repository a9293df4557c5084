"""Every command of the paper's README runs as `python -m lipcore ...` on tiny data in the real formats.

Commands come from ../shared/paper-commands.txt. Their placeholders take their first listed value
(mode: train, then eval), and the tests append only what makes them small: 1-2 epochs, tiny
batches, our data/root directories and, for eval, a few AutoAttack examples. Flags given twice are
fine: argparse keeps the last.

Which commands train is decided when this module is imported, not by the order tests run in: each
of the 34 commands is parsed into its spec (with placeholder directories), and commands whose
experiments differ only by seed, gamma or epochs take the same code path (Fig. 5 repeats Fig. 4's
models with other seeds and gammas). The first command of each distinct experiment, in file order,
is one test that trains it (and evaluates it where the command has [m]): 24 of the 34 commands.
A fast test checks that all 34 parse to their own experiments and that 24 are distinct. Each
training test stands alone, so pytest-xdist may run them on any worker (see tests/conftest.py).
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
from tests.conftest import PAPER_COMMAND_TEST, SHARED, xdist_scope
from tests.fakedata import write_cifar10, write_cifar100, write_tiny_imagenet

COMMANDS = SHARED / "paper-commands.txt"


@dataclass
class Family:
    title: str
    values: dict[str, list[str]]
    section: str = ""  # the heading above it ("Fig. 4"), if any
    commands: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.section} {self.title}" if self.section else self.title


def families() -> list[Family]:
    out: list[Family] = []
    section = ""
    for line in COMMANDS.read_text().splitlines():
        line = line.strip()
        if line.startswith("- "):
            title, _, rest = line[2:].partition(":")
            values = {k: [x.strip() for x in v.split(",")] for k, v in re.findall(r"(\w)=\[([^\]]*)\]", rest)}
            if values:
                out.append(Family(title.strip(), values, section))
            else:  # a heading over the sections below it: "- Fig. 4:"
                section = title.strip()
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


def small_args(data_dir: Path | str, root: Path | str) -> list[str]:
    """What the tests append to a command to make it small, and where its data and runs are."""
    return ["--data_dir", str(data_dir), "--root_dir", str(root), "--train_batch_size", "8", "--test_batch_size", "8"]


def parse(command: str, family: Family, mode: str, extra: list[str]) -> ExperimentSpec:
    return spec_from_args(parser().parse_args(expand(command, family.values, mode) + extra))


def experiment(spec: ExperimentSpec) -> str:
    """`spec` up to what changes no code path: its seed, the value of its bound, its epochs."""
    gamma = None if spec.gamma is None else 1.0
    return spec.model_copy(update={"seed": 0, "gamma": gamma, "epochs": 1}).to_json()


# Relative cost of one command's test on CI's 2 cores, so that tests/conftest.py can start the
# longest first: fitted to CI's times per family (Tab. 3-4 Tiny-ImageNet, one DNN: 206 s; Fig. 4
# CIFAR-100, five large models: 583 s; Tab. 2 Tiny-ImageNet, four small ones: 243 s), about 15 s
# a unit there. An ordering, not a prediction: the small CIFAR-10 models take 2-4 s, not 15.
SCALE_COST = {"small": 1.0, "medium": 3.0, "large": 8.0, "xlarge": 16.0}
# Per model, against KWL: the DNN's float64 Cayley blocks, and Resnet-SLL's float64 bound of its SLL
# blocks (at the end of training and again in eval). Measured one test at a time (load 5-30, so
# ratios only): Resnet-SLL 494 s large / 591 s Tiny / 125 s CIFAR-10, KWL 96-169 s / 12-175 s / 10-13 s.
MODEL_COST = {"DNN": 3.4, "Resnet": 4.0}


@dataclass(frozen=True, eq=False)
class Command:
    family: Family
    index: int  # 1-based, within its family
    text: str
    spec: ExperimentSpec  # mode train, parsed with placeholder directories

    @property
    def id(self) -> str:
        s = self.spec
        return f"{self.family.label} #{self.index} {s.model}-{s.layer}-{s.scale}"

    @property
    def cost(self) -> float:
        s = self.spec
        if not s.img_size:
            return 0.1  # the Toy model on 1-D data: seconds
        return (s.img_size / 32) ** 2 * SCALE_COST.get(s.scale or "small", 1.0) * MODEL_COST.get(s.model, 1.0)


# experiment(spec) must not depend on the test's tmp paths: the key is made with placeholders
PLACEHOLDER_DIRS = small_args("/placeholder/data", "/placeholder/saved_models")
ALL_COMMANDS = [
    Command(f, i, c, parse(c, f, "train", PLACEHOLDER_DIRS)) for f in FAMILIES for i, c in enumerate(f.commands, 1)
]


def first_of_each_experiment(commands: list[Command]) -> list[Command]:
    first: dict[str, Command] = {}
    for c in commands:
        first.setdefault(experiment(c.spec), c)
    return list(first.values())  # in file order


RUNS = first_of_each_experiment(ALL_COMMANDS)  # the commands that train: one test each


def test_every_section_of_the_paper_commands_is_covered() -> None:
    lines = [ln for ln in COMMANDS.read_text().splitlines() if ln.startswith("python main.py")]
    assert len(FAMILIES) == 9  # Toy; Fig. 4 and 5, Tab. 2 and Tab. 3-4, each on two datasets
    assert sum(len(f.commands) for f in FAMILIES) == len(ALL_COMMANDS) == len(lines) == 34


def test_every_command_parses_to_its_own_experiment() -> None:
    other_dirs = small_args("/elsewhere/data", "/elsewhere/root")
    for c in ALL_COMMANDS:
        assert c.spec.dataset in c.text and c.spec.model in c.text, c.id  # the command's own experiment
        assert experiment(parse(c.text, c.family, "train", other_dirs)) == experiment(c.spec), c.id
    assert len({experiment(c.spec) for c in ALL_COMMANDS}) == len(RUNS) == 24
    assert RUNS == sorted(RUNS, key=ALL_COMMANDS.index)  # first occurrences, in file order
    assert len({c.id for c in RUNS}) == len(RUNS)
    # the 10 that don't train are Fig. 5's: Fig. 4's models again with other seeds and gammas
    assert {c.family.section for c in ALL_COMMANDS if c not in RUNS} == {"Fig. 5"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    # One training step per epoch with batches of 8: the large models cost seconds per step on a CPU.
    write_cifar10(d, per_batch=2, n_test=4)  # 10 training images
    write_cifar100(d, n=8, n_test=4)
    write_tiny_imagenet(d)  # 9 training images, 4 validation images
    return d


@pytest.mark.slow  # the paper's large models, trained, certified in float64 and attacked on the CPU
@pytest.mark.parametrize("command", RUNS, ids=lambda c: c.id)
def test_paper_command_runs(command: Command, data_dir: Path, tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "saved_models")
    small = small_args(data_dir, root)
    family = command.family
    assert experiment(parse(command.text, family, "train", small)) == experiment(command.spec)
    modes = family.values.get("m", ["train"]) if "[m]" in command.text else ["train"]
    for mode in modes:
        argv = expand(command.text, family.values, mode)
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
    # A large model's run (weights, Adam state, checkpoint) is up to a GB, and kept they came to
    # 17 GB in a full test run, enough to fill a CI machine's disk. Checked, then gone.
    shutil.rmtree(run, ignore_errors=True)


def test_each_paper_command_test_is_a_unit_of_work_of_its_own() -> None:
    """`make test` shares these between its workers, and the rest of a file stays on one (conftest.py)."""
    assert test_paper_command_runs.__name__ == PAPER_COMMAND_TEST
    for c in RUNS:
        nodeid = f"tests/test_cli.py::{PAPER_COMMAND_TEST}[{c.id}]"
        assert xdist_scope(nodeid) == nodeid
    assert xdist_scope("tests/test_cli.py::test_missing_data_names_the_directory") == "tests/test_cli.py"


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
