"""Every notebook runs top to bottom in a fresh kernel, within a per-notebook time limit, and its
executed HTML export (what ``jupyter nbconvert --to html --execute`` writes) shows every figure.

The notebooks are executed with nbclient (what nbmake, nbconvert and Voila use underneath) in their
own folder, so relative paths behave as in JupyterLab. They are committed without outputs (checked).
"""

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ARTIFACTS = NOTEBOOKS.parent / "test-artifacts" / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
#: Wall-clock seconds for a whole notebook, kernel start included (each needs a few to ~25 here).
NOTEBOOK_TIMEOUT = 90
#: The figures each story notebook shows, by a text its drawing carries (a title, a trace name).
FIGURES = {
    "01_hessian_basics": ["finite differences", "second derivative dᵀ H d along the line"],
    "02_methods": ["batch of 16 inputs, n = 16", "forum loop"],
    "03_diagonal": ["full, then diagonal", "Hutchinson, relative error"],
    "04_finite_differences": ["finite differences", "float32"],
    "05_your_own_model": [
        "the input: a synthetic 28×28",
        "pixel j (rows) × pixel k (columns)",
        "as a 28×28 image",
        "diagonal of the loss Hessian",
    ],
    "06_explore_your_own_model": [
        "sum of 3 node terms",
        "How pixel (12, 4) interacts with every pixel",
        "Laplacian Δu",
        "hessviz explorer (a static copy)",
    ],
}


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
    assert len([n for n in names if n[:2].isdigit()]) == 7, names


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    dirty = [i for i, c in code if c.outputs or c.execution_count]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


_EXECUTED: dict[Path, tuple[nbformat.NotebookNode, float]] = {}


def executed(path: Path) -> tuple[nbformat.NotebookNode, float]:
    """``(notebook with outputs, seconds)``: each notebook runs once per test session."""
    if path not in _EXECUTED:
        _EXECUTED[path] = _execute(path)
    return _EXECUTED[path]


def _execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
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
    return nb, time.perf_counter() - start


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs_top_to_bottom(path, kernel_env):
    nb, elapsed = executed(path)
    print(f"{path.name}: {elapsed:.1f} s")
    assert elapsed < NOTEBOOK_TIMEOUT
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


STORIES = [p for p in PATHS if p.stem in FIGURES]


@pytest.mark.parametrize("path", STORIES, ids=[p.stem for p in STORIES])
def test_html_export_shows_every_figure(path, kernel_env):
    """nbconvert drops plotly's own mimetype; each figure must also carry an HTML copy that draws
    with the plotly.js embedded once in the page (offline: no CDN)."""
    nb, _ = executed(path)
    figures = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert figures, f"{path.name} shows no figure"
    html, _ = HTMLExporter().from_notebook_node(nb)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # to open and look at
    (ARTIFACTS / f"{path.stem}.html").write_text(html)
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1, "plotly.js should be embedded once"
    assert not re.search(r"<script[^>]*src=\"https?://[^\"]*plotly", html), "plotly.js from a CDN"
    drawings = [o["data"].get("text/html", "") for o in figures]
    assert all("Plotly.newPlot(" in d for d in drawings), "a figure without its HTML copy"
    # A live explorer (a widget) is followed by a static copy of its figures for exports.
    copies = [
        o["data"]["text/html"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "hv-static-copy" in o.get("data", {}).get("text/html", "")
    ]
    copied = sum(copy.count("Plotly.newPlot(") for copy in copies)
    assert len(re.findall(r"Plotly\.newPlot\(", html)) == len(figures) + copied
    drawings += copies
    for text in FIGURES[path.stem]:
        escaped = json.dumps(text)[1:-1]
        assert any(text in d or escaped in d for d in drawings), f"no figure shows {text!r}"
