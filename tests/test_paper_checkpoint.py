"""The paper's own checkpoints (model.ckpt) load, reproduce their outputs, and never run code."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lipcore.checkpoint import CheckpointError, load_model, save_model
from lipcore.paper_checkpoint import reference_sll_factor, spec_from_run_dir
from lipcore.spec import ExperimentSpec
from tests.conftest import SHARED

PAPER = SHARED / "paper-checkpoints"
INDEX = json.loads((PAPER / "index.json").read_text()) if (PAPER / "index.json").is_file() else {}
CHECKPOINTS = [c["dir"] for c in INDEX.get("checkpoints", [])]
LAYOUTS = INDEX.get("key_layouts", [])


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference over the largest reference magnitude."""
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def normwise_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| (Frobenius): the usual relative error of a whole output."""
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def test_shared_folder_is_there() -> None:
    assert len(CHECKPOINTS) >= 6, f"no paper checkpoints under {PAPER} (set LBDN_SHARED_DIR)"


@pytest.mark.parametrize("run", CHECKPOINTS)
def test_paper_checkpoint_reproduces_its_outputs(run: str) -> None:
    folder = PAPER / run
    loaded = load_model(folder / "model.ckpt")  # the spec comes from the run directory's name
    entry = next(c for c in INDEX["checkpoints"] if c["dir"] == run)
    assert (loaded.spec.model, loaded.spec.layer, loaded.source) == (entry["model"], entry["layer"], "paper")
    io = np.load(folder / "io.npz")
    with torch.no_grad():
        out = loaded.model(torch.from_numpy(io["x"])).numpy()
    # y is the paper code's float32 output, itself off the exact network: for KWL-Sandwich the
    # float64 forward of these weights is 1.56e-5 (normwise; 1.93e-5 largest entry) from y. Our
    # float32 forward: 7.2e-6 normwise, 1.0e-5 largest entry (over the largest |y|); a wrong key or
    # a transposed kernel is off by O(1).
    assert normwise_error(out, io["y"]) <= 1e-5
    assert rel_error(out, io["y"]) <= 3e-5


def test_imported_sll_bound_is_raised_not_lowered() -> None:
    """The paper's SLL epsilon form needs gamma * factor (>= 1): never a smaller bound than gamma."""
    loaded = load_model(PAPER / "square_wave/Toy-SLL-small-gamma5.0/model.ckpt")
    assert loaded.bound_factor >= 1.0
    assert loaded.model.gamma == pytest.approx(5.0 * loaded.bound_factor, rel=1e-12)
    # A one-neuron block with a tiny q: the factor accounts for 2 eps / q (the published flaw).
    from lipcore.layers import SLLBlockFc

    block = SLLBlockFc(1, 1, reference_epsilon=True).double()
    with torch.no_grad():
        block.weights.fill_(1.0)
        block.q.fill_(1e-4)
        block.bias.zero_()
    factor = reference_sll_factor(block)
    x = torch.zeros(1, 1, dtype=torch.float64)
    d = torch.full((1, 1), 1e-3, dtype=torch.float64)
    slope = ((block(x + d) - block(x)).abs() / d).item()  # the true slope on the active side
    assert slope <= factor + 1e-12
    assert slope > 1.0  # the flaw is real, so the raised bound is needed


def test_run_dir_names_give_the_spec() -> None:
    spec = spec_from_run_dir("/x/saved_models_seed7/cifar100/Resnet-SLL-small-LLN-gamma1.0/model.ckpt")
    assert (spec.model, spec.layer, spec.scale, spec.lln, spec.gamma, spec.dataset, spec.seed) == (
        "Resnet",
        "SLL",
        "small",
        True,
        1.0,
        "cifar100",
        7,
    )
    with pytest.raises(ValueError, match="folder name"):
        spec_from_run_dir("/x/some-folder/model.ckpt")


def test_run_directory_prefers_safetensors(tmp_path: Path) -> None:
    run = tmp_path / "KWL-Sandwich-small-gamma2.0"
    run.mkdir()
    shutil.copy(PAPER / "cifar10/KWL-Sandwich-small-gamma2.0/model.ckpt", run / "model.ckpt")
    with pytest.raises(CheckpointError):  # the folder above is not a dataset name
        load_model(run)
    spec = ExperimentSpec(model="KWL", layer="Sandwich", scale="small", gamma=2.0, dataset="cifar10")
    loaded = load_model(run, spec)
    save_model(
        run / "model.safetensors",
        loaded.model,
        spec,
        classes=loaded.classes,
        mean=loaded.mean,
        std=loaded.std,
        sll_reference_epsilon=True,
    )
    again = load_model(run)
    assert again.source == "lbdn" and again.classes[0] == "airplane"


@pytest.mark.slow  # seconds to a minute each on 2 cores: make test runs it, make test-fast not
@pytest.mark.parametrize(
    "layout", LAYOUTS, ids=lambda lay: f"{lay['model']}-{lay['layer']}-{lay['dataset']}-LLN{lay['LLN']}"
)
def test_index_layouts_load_into_our_architectures(layout: dict, tmp_path: Path) -> None:
    """State dicts of the listed key names and shapes (random values) load, each tensor in its place."""
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(tuple(shape), generator=gen) for k, shape in layout["keys"].items()}
    path = tmp_path / "model.ckpt"
    torch.save(state, path)
    spec = ExperimentSpec(
        model=layout["model"],
        layer=layout["layer"],
        scale=layout["scale"],
        dataset=layout["dataset"],
        gamma=layout["gamma"],
        lln=layout["LLN"],
    )
    loaded = load_model(path, spec)
    ours = loaded.model.state_dict()
    assert len(ours) == len(state)
    # every tensor of the file is in the model, bit for bit
    for key, value in state.items():
        assert any(torch.equal(value, w) for w in ours.values() if w.shape == value.shape), key
    body = loaded.model.body
    if layout["model"] == "Resnet":
        from lipcore.layers import SLLBlockConv, SLLBlockFc

        convs = [m for m in body if isinstance(m, SLLBlockConv)]
        fcs = [m for m in body if isinstance(m, SLLBlockFc)]
        assert torch.equal(convs[3].kernel, state["stable_block.3.kernel"])
        assert torch.equal(fcs[0].weights, state["layers_linear.1.weights"])
        if layout["LLN"]:
            assert torch.equal(body[-1].weight, state["last_last.weight"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(x)).all()


def test_misfit_names_first_key_and_both_shapes() -> None:
    path = PAPER / "cifar10/KWL-Sandwich-small-gamma2.0/model.ckpt"
    medium = ExperimentSpec(model="KWL", layer="Sandwich", scale="medium", gamma=2.0, dataset="cifar10")
    with pytest.raises(CheckpointError) as err:
        load_model(path, medium)
    msg = str(err.value)
    assert "'body.0.weight'" in msg and "[32, 35, 3, 3]" in msg and "[64, 67, 3, 3]" in msg


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_code_running_pickle_is_refused_and_nothing_runs(container: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "run" / "model.ckpt"
    path.parent.mkdir()
    payload = {"model.0.weight": torch.zeros(2), "evil": _Payload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=(container == "zip"))
    spec = ExperimentSpec(model="Toy", layer="Plain")
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_model(path, spec)
    assert not marker.exists()
    # The payload is live: a full unpickle (what we never do) runs it. Checked in a child process.
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        timeout=300,
    )
    assert marker.read_text() == "ran"


def test_non_tensor_state_dict_and_plain_pickle_are_refused(tmp_path: Path) -> None:
    spec = ExperimentSpec(model="Toy", layer="Plain")
    odd = tmp_path / "odd.ckpt"
    torch.save({"model.0.weight": torch.zeros(2), "epoch": 3}, odd)
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        load_model(odd, spec)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Payload(tmp_path / "ran"), protocol=2))
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_model(raw, spec)
    assert not (tmp_path / "ran").exists()


def test_cli_eval_runs_the_table1_study_on_a_paper_run_directory(tmp_path: Path, capsys) -> None:
    from lipcore.cli import main

    run = tmp_path / "saved_seed123" / "square_wave" / "Toy-Sandwich-small-gamma5.0"
    run.mkdir(parents=True)
    shutil.copy(PAPER / "square_wave/Toy-Sandwich-small-gamma5.0/model.ckpt", run / "model.ckpt")
    code = main(
        [
            "--mode",
            "eval",
            "-m",
            "Toy",
            "-d",
            "square_wave",
            "--layer",
            "Sandwich",
            "-g",
            "5",
            "--root_dir",
            str(tmp_path / "saved"),
            "--lip-restarts",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "Evaluating the paper checkpoint" in out
    result = json.loads((run / "eval_toy.json").read_text())
    assert result["model_file"] == "model.ckpt" and result["gamma"] == 5.0
    assert 0 < result["tightness"] <= 1.0 + 1e-6  # a lower bound on the Lipschitz constant, over gamma
    assert len(result["layers"]) == 10


def test_file_kind_is_told_by_content_not_by_a_shared_first_byte(tmp_path: Path) -> None:
    """A safetensors header length can start with byte 0x80, like a pickle: still ours."""
    from safetensors.torch import save_file

    from lipcore.checkpoint import is_paper_checkpoint

    found = None
    for n in range(1, 400):
        p = tmp_path / f"{n}.safetensors"
        save_file({"x" * n: torch.zeros(1)}, str(p))
        if p.read_bytes()[:1] == b"\x80":
            found = p
            break
    assert found is not None and not is_paper_checkpoint(found)
    torch.save({"a": torch.zeros(1)}, tmp_path / "z.ckpt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "l.ckpt", _use_new_zipfile_serialization=False)
    assert is_paper_checkpoint(tmp_path / "z.ckpt") and is_paper_checkpoint(tmp_path / "l.ckpt")
