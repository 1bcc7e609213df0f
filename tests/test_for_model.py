"""``HessianExplorer.for_model``: the figures on screen hold the engine's numbers for a user's own
model (a custom-forward MLP, a CNN on a 28×28 image, a PINN), controls update them, and a model
that fails gives a message, never an exception. Headless: no browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hessviz as hv
from hessviz.widgets import HessianExplorer, ModelExplorer

ATOL = 1e-10


class CustomMLP(nn.Module):
    """3 inputs → 2 outputs with a hand-written forward (functional activations, a product)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(3, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.out(F.softplus(self.fc2(h)) * h)


class SmallCNN(nn.Module):
    """(1, 28, 28) or (1, 1, 28, 28) → 10 class scores: conv → tanh → pool → softplus → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=5)  # 28 → 24, pooled to 12
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(F.softplus(F.avg_pool2d(torch.tanh(self.conv(x)), 2)).flatten(-3))


class PINN(nn.Module):
    """u(x, t) = x (1 − x) · net(x, t): a hard boundary condition at x = 0 and x = 1."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return x[:, :1] * (1 - x[:, :1]) * self.net(x)


def build(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        x = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
        return CustomMLP().double(), x, dict(input_names=["a", "b", "c"], output_names=["p", "q"])
    if name == "cnn":
        r = torch.linspace(-1, 1, 28, dtype=torch.float64)
        ring = torch.exp(-((torch.sqrt(r[:, None] ** 2 + r[None, :] ** 2) - 0.6) ** 2) / 0.05)
        return SmallCNN().double(), ring[None], dict(output_names=[f"class {k}" for k in range(10)])
    x = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    return PINN().double(), x, dict(input_names=["x", "t"], output_names=["u"])


@pytest.fixture(scope="module")
def explorers() -> dict[str, tuple]:
    """name → (explorer, model, x): built once (construction is the slow part)."""
    out = {}
    for name in ("mlp", "cnn", "pinn"):
        model, x, names = build(name)
        out[name] = (HessianExplorer.for_model(model, x, **names), model, x)
    return out


def trace(figure, name: str):
    return next(t for t in figure.data if t.name == name)


def close(shown, expected) -> None:
    np.testing.assert_allclose(np.asarray(shown, float), np.asarray(expected, float), 0, ATOL)


def assert_vector_panels(app: ModelExplorer, model, x, out: int) -> None:
    H = hv.hessian(model, x, flat=True)
    m, n = app.problem.m, app.problem.n
    H = H.reshape(m, n, n)[out].numpy()
    figures = app.figures
    close(trace(figures["hessian"], "exact").z, H)
    close(trace(figures["terms"], "H").z, H)
    close(trace(figures["diagonal"], "diagonal").z, hv.hessian_diagonal(model, x, flat=True))
    close(trace(figures["spectrum"], "eigenvalues").y, np.linalg.eigvalsh(H))
    terms = [t for t in figures["terms"].data if t.type == "heatmap" and t.name != "H"]
    close(trace(figures["terms"], "Σ terms").z, H)
    node_terms = hv.layer_terms(model, x, flat=True)
    assert len(terms) == len(node_terms) + 1  # one per node (≤ 8 here), then their sum
    for shown, term in zip(terms, node_terms):
        close(shown.z, term.hessian.reshape(m, n, n)[out])


@pytest.mark.parametrize("name", ["mlp", "pinn"])
def test_vector_figures_equal_the_engine(explorers, name):
    app, model, x = explorers[name]
    assert app.last_error is None
    assert set(app.figures) == {"hessian", "diagonal", "spectrum", "terms"}
    assert_vector_panels(app, model, x, app.output)
    m, n = app.problem.m, app.problem.n
    fd = hv.fd_hessian(model, x, step=app.results.step, flat=True).reshape(m, n, n)
    close(trace(app.figures["hessian"], "FD").z, fd[app.output])


def test_vector_output_and_point_update_the_figures(explorers):
    app, model, x = explorers["mlp"]
    app.controls["out"].value = 1  # as a user does
    assert app.last_error is None and app.output == 1
    assert_vector_panels(app, model, x, 1)
    assert app.set_point(0.8, -0.2)
    moved = x.clone()
    moved[:2] = torch.tensor([0.8, -0.2], dtype=x.dtype)
    assert_vector_panels(app, model, moved, 1)
    assert app.reset_point() and app.set_output(0)
    assert_vector_panels(app, model, x, 0)
    assert "method 'graph'" in app.status_text and "output p" in app.status_text


def test_vector_names_and_tooltips(explorers):
    app, _, _ = explorers["mlp"]
    assert app.figures["hessian"].layout.xaxis.ticktext == ("a", "b", "c")
    assert [app.controls[f"x{j}"].description for j in range(3)] == ["a", "b", "c"]
    assert app.controls["out"].options == (("p", 0), ("q", 1))
    assert all(w.tooltip for w in app.controls.values())


def test_pinn_laplacian_and_node_paths(explorers):
    app, model, x = explorers["pinn"]
    laplacian = float(hv.laplacian(model, x).reshape(-1)[0])
    assert abs(app.results.laplacians[0] - laplacian) <= ATOL
    assert f"Laplacian Δu = {laplacian:.6g}" in app.captions["diagonal"]
    names = [t.name for t in app.figures["terms"].data if t.type == "heatmap"]
    assert "net.1 · tanh" in names  # labelled by the module path hv.layer_terms gives


def test_image_figures_equal_the_engine(explorers):
    app, model, x = explorers["cnn"]
    assert app.last_error is None
    assert set(app.figures) == {"diagonal_image", "pixel_row", "spectrum"}
    for out, (r, c) in [(app.output, app.pixel), (3, (5, 20))]:
        assert app.set_output(out) and app.set_pixel(r, c)
        H = hv.hessian(model, x, outputs=out, flat=True).numpy()
        diagonal = hv.hessian_diagonal(model, x, outputs=out).numpy()
        close(trace(app.figures["diagonal_image"], "diagonal").z, diagonal.reshape(28, 28))
        close(trace(app.figures["pixel_row"], "pixel row").z, H[28 * r + c].reshape(28, 28))
        assert trace(app.figures["pixel_row"], "chosen pixel").x == (c,)
        close(trace(app.figures["spectrum"], "eigenvalues").y, np.linalg.eigvalsh(H))
        assert f"class {out}, pixel ({r}, {c})" in app.status_text


def test_image_pixel_sliders_update_the_row(explorers):
    app, model, x = explorers["cnn"]
    assert app.set_output(2)
    app.controls["row"].value = 9  # as a user does
    app.controls["col"].value = 11
    assert app.last_error is None and app.pixel == (9, 11)
    H = hv.hessian(model, x, outputs=2, flat=True).numpy()
    close(trace(app.figures["pixel_row"], "pixel row").z, H[28 * 9 + 11].reshape(28, 28))


def test_a_four_dimensional_image_is_an_image():
    model, x, _ = build("cnn")
    app = HessianExplorer.for_model(model, x[None])  # (1, 1, 28, 28)
    assert app.problem.kind == "image" and app.problem.image_shape == (28, 28)
    assert app.figures["diagonal_image"].data[0].z.shape == (28, 28)


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("shapes do not match")


class FailsFarAway(nn.Module):
    def forward(self, x):
        if x[0] > 1:
            raise RuntimeError("out of range")
        return torch.sin(x).sum()


@pytest.mark.parametrize(
    "model, x, kwargs, words",
    [
        (Broken(), torch.zeros(3), {}, "RuntimeError: shapes do not match"),
        (nn.Linear(3, 2), torch.zeros(3, dtype=torch.long), {}, "floating-point input"),
        (nn.Linear(3, 2), torch.zeros(3), {"input_names": ["a"]}, "1 input_names for 3 inputs"),
        ("not a model", torch.zeros(3), {}, "nn.Module or a function"),
        (nn.Linear(100, 1), torch.zeros(100), {}, "more than the explorer draws"),
    ],
    ids=["raises", "integer-input", "names", "not-callable", "too-many-inputs"],
)
def test_a_model_that_fails_gives_a_message(model, x, kwargs, words):
    app = HessianExplorer.for_model(model, x, **kwargs)  # never raises
    assert app.last_error is not None and words in app.last_error
    assert words in app.widget.children[1].children[0].children[1].value  # the message area
    assert app.figures == {}


def test_a_failure_later_keeps_the_last_good_figures():
    app = HessianExplorer.for_model(FailsFarAway(), torch.tensor([0.5, 0.2], dtype=torch.float64))
    before = app.figures["hessian"].data[0].z
    assert not app.set_point(1.5)
    assert "out of range" in app.last_error
    close(app.figures["hessian"].data[0].z, before)
    assert app.set_point(0.4) and app.last_error is None


def test_static_copy_for_html_exports(explorers, monkeypatch):
    """Displayed: the widget, then a static copy of the figures (hidden by the widget's CSS)."""
    app, _, _ = explorers["pinn"]
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    app._ipython_display_()
    assert shown[0] is app.widget
    assert shown[1].data.count("Plotly.newPlot(") == len(app.figures)
    assert "hv-static-copy" in shown[1].data and ".hv-static-copy { display: none; }" in str(
        app.widget.children[0].value
    )
