"""Every notebook runs top to bottom in a fresh kernel, within a per-notebook time limit.

The notebooks are executed with nbclient (what nbmake and Voila use underneath) in their own
folder, so relative paths behave as in JupyterLab. They are committed without outputs (checked).
"""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
#: Wall-clock seconds for a whole notebook, kernel start included (each needs a few to ~25 here).
NOTEBOOK_TIMEOUT = 90

pytestmark = pytest.mark.notebooks


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """The kernel's environment: Jupyter's files in a temp folder, not the home directory."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugger warning on stderr
    # One intra-op thread per kernel: with other tests or programs on the same few cores, torch's
    # spinning thread pool slows small problems down by 10-100x.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("QUERY_STRING", raising=False)


def test_the_notebooks_are_there():
    names = [p.name for p in PATHS]
    assert "00_index.ipynb" in names and "dashboard.ipynb" in names
    assert len([n for n in names if n[:2].isdigit()]) == 6, names


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    dirty = [i for i, c in code if c.outputs or c.execution_count]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs_top_to_bottom(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    deadline = start + NOTEBOOK_TIMEOUT
    client = NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )

    def shrink_timeout(**_):
        # nbclient's timeout is per cell; what is left of the notebook's budget bounds each cell.
        client.timeout = max(1, int(deadline - time.perf_counter()))

    client.on_cell_execute = shrink_timeout
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s")
    assert elapsed < NOTEBOOK_TIMEOUT
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
