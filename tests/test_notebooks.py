"""Every Colab notebook (colab/*.ipynb) runs top to bottom on CPU with the tiny presets, as a user would run it.

The notebooks read their CI settings from the environment (`DIFFUSION_JAX_PRESET`, `DIFFUSION_JAX_OVERRIDES`,
`DIFFUSION_JAX_WORKDIR`), so CI runs the tiny presets, shortened, in a temporary workdir. The kernel is this test
process's Python (a kernelspec written for the test), so a fresh virtualenv tests its own install.
"""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
CELL_TIMEOUT_S = 240  # per cell; the slowest (digits training, mostly compilation) took 50-110 s on a busy 2-core CPU
KERNEL = "diffusion-jax-test"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in IPython tracebacks

# Config overrides per notebook for CI, on top of the tiny preset: fewer steps, less data. Keys must exist in the
# notebook's config (the notebooks refuse unknown keys). Notebooks not listed run the plain tiny preset.
CI_OVERRIDES = {
    "digits": {"train.num_steps": 10, "eval.classifier_steps": 10},
    "clip": {"train.num_steps": 40, "data.train_copies": 1},
    "txt2img": {"train.num_steps": 6, "train.sample_every": 0, "clip.train.num_steps": 10,
                "clip.data.train_copies": 1, "eval.classifier_steps": 10},
}

# Training logic lives in the library; a notebook that grows its own would show up here.
TRAINING_LOGIC = ("optax", "jax.grad", "value_and_grad", "train_loop", "apply_gradients")


def _write_kernelspec(jupyter_dir: Path) -> None:
    """A kernel running this very interpreter, whatever 'python3' kernelspecs the machine has installed.

    Found through $JUPYTER_PATH, which jupyter_client searches first; the name is unique, so nothing shadows it.
    """
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "diffusion_jax tests", "language": "python"}))


def _describe(nb, index) -> str:
    """Names the cell that was running when execution failed, for the failure message."""
    if index is None:
        return "before the first cell (kernel start)"
    source = nb.cells[index].source.strip().splitlines()
    return f"cell {index} (code cell starting {source[0] if source else ''!r})"


def test_every_phase_has_a_notebook():
    assert {"digits.ipynb", "clip.ipynb", "txt2img.ipynb"} <= {p.name for p in NOTEBOOKS}, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs_or_training_logic(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stored = [i for i, c in code if c.outputs or c.execution_count is not None]
    assert not stored, f"{path.name}: cells {stored} keep outputs; clear them before committing"
    for i, c in code:
        found = [word for word in TRAINING_LOGIC if word in c.source]
        assert not found, f"{path.name}: cell {i} uses {found}; training logic belongs in diffusion_jax.trainers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch, request):
    monkeypatch.setenv("DIFFUSION_JAX_PRESET", "tiny")
    monkeypatch.setenv("DIFFUSION_JAX_OVERRIDES", json.dumps(CI_OVERRIDES.get(path.stem, {})))
    monkeypatch.setenv("DIFFUSION_JAX_WORKDIR", str(tmp_path / "workdir"))
    if path.stem == "stable_diffusion":  # a tiny random SD 1.x-style folder instead of a downloaded one
        from tests.test_stable_diffusion import build
        build(str(tmp_path / "sd"), "sd1", request.getfixturevalue("bpe_file"))
        monkeypatch.setenv("DIFFUSION_JAX_PRETRAINED", str(tmp_path / "sd" / "sd1"))
        monkeypatch.setenv("DIFFUSION_JAX_STEPS", "2")
    # The kernel inherits the suite's XLA_FLAGS (conftest.py: 8 fake CPU devices, so the data-parallel path runs for
    # real, and fast compilation) and its compilation cache.
    _write_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(path, as_version=4)
    started = {"index": None}
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},  # the kernel starts in colab/, as in a checkout
        on_cell_start=lambda cell, cell_index: started.update(index=cell_index))
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        failure = f"{path.name}: {_describe(nb, started['index'])} failed: {type(e).__name__}\n{ANSI.sub('', str(e))}"
    if failure:
        pytest.fail(failure, pytrace=False)
    wrote = ("prompts.png", "img2img.png") if path.stem == "stable_diffusion" else ("metrics.jsonl",)
    for name in wrote:
        assert (tmp_path / "workdir" / name).exists(), f"the notebook did not write {name} in DIFFUSION_JAX_WORKDIR"
