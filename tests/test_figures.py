"""The figure functions: pure numpy → plotly, checked on closed forms (no widgets, no engine)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest

from hessviz import figures as F

FIGURES_DIR = Path(F.__file__).parent

SYMMETRIC = np.array([[2.0, -1.0, 0.5], [-1.0, -3.0, 0.0], [0.5, 0.0, 1.0]])


def test_figures_import_only_numpy_and_plotly():
    """Layering: the figures package never imports torch, ipywidgets or the engine; of hessviz
    it reads only the numpy side of the compute layer's analysis (``hessviz.analysis``)."""
    for path in FIGURES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                if name == "hessviz.analysis":
                    continue
                assert root not in {"torch", "ipywidgets", "anywidget", "hessviz"}, (path, name)


def test_the_analysis_module_imports_no_plotting_and_no_torch_at_import():
    import subprocess
    import sys

    code = (
        "import sys, hessviz.analysis, hessviz.figures; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'ipywidgets', 'anywidget'}); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- panel 1: exact | FD | gap --------------------------------------------------------------------


def test_hessian_figure_draws_matrices_like_matrices():
    fd = SYMMETRIC + 1e-7 * np.arange(9).reshape(3, 3)
    fig = F.hessian_figure(SYMMETRIC, fd, output=1, step=1e-4)
    exact_trace, fd_trace, gap_trace = fig.data
    np.testing.assert_array_equal(exact_trace.z, SYMMETRIC)
    np.testing.assert_array_equal(fd_trace.z, fd)
    np.testing.assert_allclose(gap_trace.customdata, np.abs(SYMMETRIC - fd))
    gap = np.abs(SYMMETRIC - fd)
    np.testing.assert_allclose(gap_trace.z[gap > 0], np.log10(gap[gap > 0]))
    assert gap_trace.z[0, 0] == fig.layout.coloraxis2.cmin < gap_trace.z[gap > 0].min()
    # one diverging scale centred at 0 shared by exact and FD
    assert exact_trace.coloraxis == fd_trace.coloraxis == "coloraxis"
    assert gap_trace.coloraxis == "coloraxis2"
    half = np.abs(np.concatenate([SYMMETRIC, fd])).max()
    assert fig.layout.coloraxis.cmin == -half and fig.layout.coloraxis.cmax == half
    # row 0 on top, square cells
    for k in ("", "2", "3"):
        yaxis = fig.layout[f"yaxis{k}"]
        assert yaxis.autorange == "reversed"
        assert yaxis.scaleanchor == f"x{k}" and yaxis.scaleratio == 1
    assert exact_trace.hovertemplate.startswith("∂²y_1/∂x_%{y}∂x_%{x} = %{z")
    assert exact_trace.texttemplate == "%{text}"  # n = 3: values printed in cells
    assert "h = 1.0e-4" in fig.layout.annotations[1].text


def test_hessian_figure_hides_cell_values_for_large_n_and_survives_exact_zeros():
    big = np.zeros((8, 8))
    fig = F.hessian_figure(big, big)
    assert fig.data[0].texttemplate is None and fig.data[0].text is None
    assert np.isfinite(fig.data[2].z).all()  # zeros sit at the bottom of the log scale
    assert fig.layout.coloraxis.cmax == 1.0  # an all-zero matrix is white, not an error


# -- panel 2: second-order Jacobian ---------------------------------------------------------------


def test_second_order_jacobian_figure():
    exact = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    hutchinson = exact + 0.1
    fig = F.second_order_jacobian_figure(exact, exact, hutchinson, samples=16)
    assert [t.name for t in fig.data] == ["exact", "FD", "Hutchinson", "|Hutchinson − exact|"]
    assert fig.data[0].z.shape == (2, 3)
    np.testing.assert_allclose(fig.data[3].customdata, np.full((2, 3), 0.1))
    assert "16 samples" in fig.layout.annotations[2].text
    assert "rel. err 0.033" in fig.layout.annotations[3].text  # 0.1 / 3
    assert fig.data[0].text[0][0] == "1"  # n ≤ 4: values in cells
    assert fig.data[0].hovertemplate.startswith("∂²y_%{y}/∂x_%{x}²")


def test_relative_error_of_zero_reference_is_absolute():
    assert F.relative_error(np.array([1e-3]), np.zeros(1)) == pytest.approx(1e-3)


# -- panel 3: spectrum and verdict ----------------------------------------------------------------

VERDICT_CASES = {
    "definite-up": ([1.0, 2.0], "minimum"),
    "definite-down": ([-1.0, -2.0], "maximum"),
    "both-signs": ([-1.0, 0.5], "saddle"),
    "all-zero": ([0.0, 0.0, 0.0], "flat"),
    "semidefinite": ([0.0, 4.0], "minimum"),
    "roundoff-is-zero": ([1e-17, -1e-17, 2.0], "minimum"),
}


@pytest.mark.parametrize("eigenvalues, kind", VERDICT_CASES.values(), ids=VERDICT_CASES.keys())
def test_curvature_verdict(eigenvalues, kind):
    verdict = F.curvature_verdict(eigenvalues)
    assert verdict.kind == kind
    assert verdict.positive + verdict.negative + verdict.zero == len(eigenvalues)
    assert verdict.description.startswith(kind if kind != "minimum" else "minimum-like")


def test_sorted_eigh_reconstructs_and_fixes_signs():
    values, vectors = F.sorted_eigh(SYMMETRIC)
    assert np.all(np.diff(values) >= 0)
    np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, SYMMETRIC, atol=1e-12)
    pivots = np.abs(vectors).argmax(axis=0)
    assert np.all(vectors[pivots, range(3)] > 0)


def test_spectrum_figure():
    values, vectors = F.sorted_eigh(SYMMETRIC)
    verdict = F.curvature_verdict(values)
    fig = F.spectrum_figure(values, vectors, verdict=verdict.kind, description=verdict.description)
    np.testing.assert_array_equal(fig.data[0].y, values)
    np.testing.assert_array_equal(fig.data[1].z, vectors)
    assert "saddle" in fig.layout.title.text
    colours = fig.data[0].marker.color
    assert colours[0] != colours[-1]  # negative and positive eigenvalues differ in colour


# -- panel 4: layer terms -------------------------------------------------------------------------


def test_layer_terms_figure_sums_and_checks():
    terms = [("hidden layer 1", SYMMETRIC), ("hidden layer 2", -0.5 * SYMMETRIC)]
    fig = F.layer_terms_figure(terms, 0.5 * SYMMETRIC, output=0)
    assert [t.name for t in fig.data] == ["hidden layer 1", "hidden layer 2", "Σ terms", "H"]
    np.testing.assert_allclose(fig.data[2].z, 0.5 * SYMMETRIC)
    assert "check: max|sum − H| = 0" in fig.layout.title.text
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    titles = [a.text for a in fig.layout.annotations]
    assert "hidden layer 1<br>share 67%" in titles and "hidden layer 2<br>share 33%" in titles


def test_layer_terms_figure_draws_the_network_with_each_layers_share():
    terms = [("hidden layer 1", SYMMETRIC), ("hidden layer 2", 3 * SYMMETRIC)]
    fig = F.layer_terms_figure(terms, 4 * SYMMETRIC, sizes=[3, 8, 5, 2])
    assert [t.name for t in fig.data][-2:] == ["connections", "network"]
    nodes = fig.data[-1]
    assert len(nodes.x) == 3 + 6 + 5 + 2  # at most 6 circles a layer
    assert list(nodes.marker.color[3:9]) == [25.0] * 6 and nodes.marker.color[9] == 75.0
    labels = [a.text for a in fig.layout.annotations]
    assert "<b>hidden layer 1</b><br>share 25%" in labels
    assert "<b>inputs</b><br>n = 3" in labels and "<b>outputs</b><br>m = 2" in labels
    assert "⋮ 8" in labels


def test_layer_terms_figure_without_terms_explains_why():
    note = F.vanishing_explanation("linear", 2)
    fig = F.layer_terms_figure([], np.zeros((2, 2)), note=note)
    assert [t.name for t in fig.data] == ["H"]
    assert any("affine" in a.text for a in fig.layout.annotations)
    assert F.vanishing_explanation("relu", 3).startswith("ReLU")
    assert F.vanishing_explanation("tanh", 0).startswith("With no hidden layer")
    assert F.vanishing_explanation("softplus", 2) is None


# -- panel 5: landscape ---------------------------------------------------------------------------


def test_taylor_model_is_exact_for_a_quadratic():
    hessian = np.array([[2.0, 1.0], [1.0, -4.0]])
    gradient = np.array([0.5, -1.0])
    d = np.random.default_rng(0).normal(size=(10, 2))
    truth = 3.0 + d @ gradient + 0.5 * np.einsum("ij,jk,ik->i", d, hessian, d)
    np.testing.assert_allclose(F.taylor_model(d, 3.0, gradient, hessian), truth)


def test_plane_points_vary_only_the_chosen_coordinates():
    u, v, inputs = F.plane_points([1.0, 2.0, 3.0], 2, 0, radius=0.5, points=5)
    np.testing.assert_allclose(inputs[..., 1], 2.0)
    np.testing.assert_allclose(inputs[0, :, 2], u)
    np.testing.assert_allclose(inputs[:, 0, 0], v)


def test_landscape_figure():
    g = np.linspace(-1, 1, 11)
    f = g[None, :] ** 2 - g[:, None] ** 2
    fig = F.landscape_figure(
        g, g, f, f, point=[0, 0], gradient=[1.0, 0.0], hessian=np.diag([2.0, -2.0]), axes=(0, 2)
    )
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(contours) == 2
    assert contours[0].contours.to_plotly_json() == contours[1].contours.to_plotly_json()
    assert fig.layout.xaxis.title.text == "x0" and fig.layout.yaxis.title.text == "x2"
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 2 and arrows[0].x == pytest.approx(0.6)  # 0.6 · radius along ∇
    directions = [t for t in fig.data if t.name and t.name.startswith("principal")]
    assert {t.line.color for t in directions} == {F._common.POSITIVE, F._common.NEGATIVE}
    flat = F.landscape_figure(
        g, g, f, f, point=[0, 0], gradient=[0.0, 0.0], hessian=np.diag([2.0, -2.0])
    )
    assert not [a for a in flat.layout.annotations if a.showarrow]  # no arrow for ∇ = 0


def test_landscape_figure_can_show_the_curved_part():
    g = np.linspace(-1, 1, 5)
    f = np.outer(g, g)
    fig = F.landscape_figure(
        g, g, f, f, point=[0, 0], gradient=[1.0, 0.0], hessian=np.eye(2), part="curvature"
    )
    titles = [a.text for a in fig.layout.annotations if not a.showarrow]
    assert "curved part" in titles[0] and "½dᵀHd" in titles[1]
    assert not [a for a in fig.layout.annotations if a.showarrow]  # no gradient arrow
    assert fig.layout.coloraxis.colorbar.title.text == "f − f₀ − gᵀd"


def test_profile_figure():
    t = np.linspace(-1, 1, 5)
    fig = F.profile_figure(t, t**2, t**2, point=0.5, gradient=1.0, curvature=2.0)
    assert [d.name for d in fig.data] == ["y_0", "Taylor model", "the point"]
    assert fig.data[2].y[0] == pytest.approx(0.25)


# -- panel 6: FD error vs step --------------------------------------------------------------------


def test_fd_error_figure():
    steps = np.logspace(-8, 0, 9)
    errors = {"float32": 1e-7 / steps**2 + steps**2, "float64": np.r_[0.0, 1e-16 / steps[1:] ** 2]}
    fig = F.fd_error_figure(
        steps, errors, chosen_step=1e-4, best_steps={"float32": 2e-2, "float64": 1e-4}
    )
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert [t.name for t in fig.data[:2]] == ["float32", "float64"]
    assert np.isnan(fig.data[1].y[0])  # an exact zero is a gap on a log axis
    assert list(fig.data[-1].x) == [1e-4, 1e-4]  # the chosen step
    caption = " ".join(a.text for a in fig.layout.annotations).replace("<br>", " ")
    assert "round-off grows like 1/h²" in caption and "truncation" in caption
    smooth = {"float32": errors["float32"], "float64": 1e-16 / steps**2 + steps**2}
    fig = F.fd_error_figure(steps, smooth, chosen_step=1e-4)
    caption = " ".join(a.text for a in fig.layout.annotations).replace("<br>", " ")
    assert "float32's best is" in caption  # read off the curves, not a fixed sentence
    assert fig.layout.yaxis.exponentformat == "e"


FD_READINGS = {
    # smooth: round-off left of the dip, truncation ∝ h² right of it
    "smooth": (
        lambda h: 1e-16 / h**2 + h**2,
        1e-7,
        "round-off",
        dict(roundoff=True, truncation=True),
    ),
    # a ReLU network: round-off noise until the stencil reaches a kink, then a jump
    "kink": (
        lambda h: np.where(h < 0.05, 1e-16 / h**2, 3.0),
        0.5,
        "kinks",
        dict(roundoff=True, kinks=True, truncation=False),
    ),
    # no dip: the error falls all the way to the largest step
    "no-dip": (lambda h: 1e-7 / h**2, 1e-4, "round-off", dict(roundoff=True, truncation=False)),
}


@pytest.mark.parametrize("curve, chosen, regime, flags", FD_READINGS.values(), ids=FD_READINGS)
def test_the_fd_caption_is_read_off_the_curve(curve, chosen, regime, flags):
    from hessviz.analysis import read_fd_error

    h = np.logspace(-8, 0, 9)
    reading = read_fd_error(h, {"float64": curve(h)}, chosen_step=chosen)
    assert reading.regime == regime
    for name, value in flags.items():
        assert getattr(reading.curves["float64"], name) is value, name
    if flags.get("kinks"):
        assert "kink" in reading.text and "truncation" not in reading.text


def test_fd_noise_is_grey_and_does_not_stretch_the_colour_scale():
    """A ReLU network: the exact Hessian is 0, finite differences give ±1e-10 of round-off."""
    exact = np.zeros((2, 2))
    fd = np.array([[5e-10, -3e-10], [-3e-10, 1e-10]])
    fig = F.hessian_figure(exact, fd, step=1e-4, noise_floor=1e-7)
    assert [t.name for t in fig.data] == ["exact", "FD", "|exact − FD|", "noise"]
    np.testing.assert_array_equal(fig.data[1].z, fd)  # the numbers are still there (hover)
    assert np.all(fig.data[3].z == 1) and fig.data[3].xaxis == "x2"
    assert fig.layout.coloraxis.cmax == 1.0  # white, not a saturated ±5e-10 scale
    assert "all noise" in fig.layout.annotations[1].text
    assert "(round-off)" in fig.layout.annotations[2].text  # the gap is rounding too
    partly = F.hessian_figure(SYMMETRIC, SYMMETRIC + 1e-9 * (SYMMETRIC == 0), noise_floor=1e-7)
    assert np.isnan(partly.data[3].z[0, 0]) and partly.data[3].z[1, 2] == 1
    diag = F.second_order_jacobian_figure(exact, fd, exact, samples=4, noise_floor=1e-7)
    assert diag.data[-1].name == "noise" and "all noise" in diag.layout.annotations[1].text


def test_colour_bars_use_scientific_notation():
    fig = F.hessian_figure(np.full((2, 2), 4e-10), np.full((2, 2), 4e-10))
    bar = fig.layout.coloraxis.colorbar
    assert bar.exponentformat == "e"  # "4e-10", never the SI "400p"
    g = np.linspace(-1, 1, 5)
    land = F.landscape_figure(
        g, g, np.outer(g, g), np.outer(g, g), point=[0, 0], gradient=[0, 0], hessian=np.eye(2)
    )
    assert land.layout.coloraxis.colorbar.exponentformat == "e"


def test_fd_error_figure_all_zero():
    fig = F.fd_error_figure(np.logspace(-3, 0, 4), {"float64": np.zeros(4)}, chosen_step=1e-2)
    assert any("exact here" in a.text for a in fig.layout.annotations)


# -- panel 7: race --------------------------------------------------------------------------------


def test_race_figure_before_any_timing_says_so():
    planned = [F.RaceEntry("loop", "hessian", None), F.RaceEntry("func", "hessian", None)]
    texts = [a.text for a in F.race_figure(planned).layout.annotations]
    assert "not timed yet" in texts
    timed = [F.RaceEntry("loop", "hessian", 1e-3), F.RaceEntry("func", "hessian", None)]
    assert "not timed yet" not in [a.text for a in F.race_figure(timed).layout.annotations]


def test_race_figure():
    entries = [
        F.RaceEntry("loop", "hessian", 4e-3),
        F.RaceEntry("structured", "hessian", 1e-3),
        F.RaceEntry("taylor", "diagonal", None, "n/a: not supported"),
    ]
    fig = F.race_figure(entries, subtitle="test")
    assert [t.name for t in fig.data] == ["hessian", "diagonal"]
    np.testing.assert_allclose(fig.data[0].x, [4.0, 1.0])
    assert "(fastest)" in fig.data[0].text[1]
    assert np.isnan(fig.data[1].x[0]) and fig.data[1].text[0].startswith("n/a")


# -- all panels -----------------------------------------------------------------------------------


def _all_figures():
    values, vectors = F.sorted_eigh(SYMMETRIC)
    g = np.linspace(-1, 1, 5)
    return {
        "hessian": F.hessian_figure(SYMMETRIC, SYMMETRIC),
        "diagonal": F.second_order_jacobian_figure(
            SYMMETRIC[:2], SYMMETRIC[:2], SYMMETRIC[:2], samples=4
        ),
        "spectrum": F.spectrum_figure(values, vectors, verdict="saddle"),
        "layers": F.layer_terms_figure([("a", SYMMETRIC)] * 5, 5 * SYMMETRIC),
        "landscape": F.landscape_figure(
            g, g, np.outer(g, g), np.outer(g, g), point=[0, 0], gradient=[1, 1], hessian=np.eye(2)
        ),
        "profile": F.profile_figure(g, g, g, point=0.0, gradient=1.0, curvature=0.0),
        "fdstep": F.fd_error_figure(g + 2, {"float64": g + 2}, chosen_step=2.0),
        "race": F.race_figure([F.RaceEntry("func", "hessian", 1e-3)]),
    }


@pytest.mark.parametrize("name", list(_all_figures()))
def test_every_figure_serialises_and_matches_its_spec(name):
    fig = _all_figures()[name]
    assert pio.to_json(fig)  # plotly accepted every property (plotly 7 is strict about colours)
    assert fig.layout.template is not None


def test_spec_and_figure_agree():
    spec = F.hessian_spec(SYMMETRIC, SYMMETRIC)
    fig = F.hessian_figure(SYMMETRIC, SYMMETRIC)
    assert [t["type"] for t in spec["data"]] == [t.type for t in fig.data]
    np.testing.assert_array_equal(spec["data"][0]["z"], fig.data[0].z)
    assert F.to_figure(spec).layout.coloraxis.cmax == fig.layout.coloraxis.cmax


@pytest.mark.parametrize(
    "figure",
    [
        lambda: F.hessian_figure(np.eye(3), np.eye(3) + 1e-9),
        lambda: F.second_order_jacobian_figure(*[np.ones((2, 3))] * 3, samples=8),
    ],
    ids=["hessian", "second-order-jacobian"],
)
def test_colour_bars_lie_flat_under_the_matrices(figure):
    """Not between them: a vertical bar's tick labels need a fixed ~60 px, more than the gap
    between two matrices in a narrow notebook output, and ran into the next matrix there."""
    layout = figure().layout
    axes = [key for key in layout.to_plotly_json() if key.startswith("yaxis")]
    bottom = min(layout[key].domain[0] for key in axes)
    for axis in (layout.coloraxis, layout.coloraxis2):
        bar = axis.colorbar
        assert bar.orientation == "h" and bar.yanchor == "top" and bar.y < bottom
        assert 0 <= bar.x - bar.len / 2 and bar.x + bar.len / 2 <= 1
