"""The explorer, headless: its figures show exactly what the engine computes for the same model
and point; controls, errors and query strings behave. No browser, no timing assertions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import torch
from explorer_checks import assert_figures_match_engine, close, engine_model
from hypothesis import given, settings
from hypothesis import strategies as st

import hessviz as hv
from hessviz.widgets import ExplorerState, HessianExplorer
from hessviz.widgets.explorer import text_of
from hessviz.widgets.lessons import LESSONS
from hessviz.widgets.state import QUERY_KEYS, hessian_methods

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app() -> HessianExplorer:
    """One explorer for the module (construction is the slow part); tests reset its state."""
    return HessianExplorer()


@pytest.fixture
def fresh(app) -> HessianExplorer:
    assert app.set_state(ExplorerState())
    return app


# -- the figures show the engine's numbers --------------------------------------------------------

VIEWS = {
    "default-tanh": {},
    "sigmoid-n3-out1": dict(act="sigmoid", n=3, x=(0.5, -0.25, 1.0), out=1),
    "softplus-float32-step": dict(act="softplus", dtype="float32", step=1e-2),
    "gelu-loop-one-layer": dict(act="gelu", layers=(5,), method="loop", samples=16),
    "sin-n1-m3": dict(act="sin", n=1, m=3, x=(0.7,), out=2),
    "square-deep-seed3": dict(act="square", n=4, layers=(4, 4, 4), x=(0.1, 0.2, -0.3, 1), seed=3),
    "silu-func-n8": dict(act="silu", n=8, layers=(16, 16), x=(0.1,) * 8, method="func"),
}


@pytest.mark.parametrize("changes", VIEWS.values(), ids=VIEWS.keys())
def test_figures_equal_engine_results(fresh, changes):
    assert fresh.set_state(**changes), fresh.last_error
    assert_figures_match_engine(fresh)


def test_controls_drive_the_state_and_the_figures(fresh):
    c = fresh.controls
    c["act"].value = "sigmoid"
    c["x0"].value = 1.25
    c["layers"].value = 3
    c["width2"].value = 5
    c["m"].value = 3
    c["out"].value = 2
    c["samples"].value = 32
    c["method"].value = "autograd"
    c["dtype"].value = "float32"
    c["step"].value = 1e-2
    s = fresh.state
    assert (s.act, s.x, s.layers, s.m, s.out, s.samples) == (
        "sigmoid",
        (1.25, -1.0),
        (8, 8, 5),
        3,
        2,
        32,
    )
    assert (s.method, s.dtype, s.step) == ("autograd", "float32", 0.01)
    assert fresh.last_error is None
    assert_figures_match_engine(fresh)
    c["step_auto"].value = True
    assert fresh.state.step is None
    assert fresh.controls["step"].value == pytest.approx(hv.default_fd_step(torch.float32, 1.25))


def test_controls_follow_the_architecture(fresh):
    c = fresh.controls
    c["n"].value = 3  # the new coordinate takes its (hidden) slider's value
    assert fresh.state.x == (0.3, -1.0, c["x2"].value)
    assert [c[f"x{k}"].layout.display for k in range(4)] == [None, None, None, "none"]
    assert fresh._controls.plane_box.layout.display is None  # a choice from n = 3 on
    c["plane_b"].value = 2
    assert fresh.state.plane == (0, 2)
    assert fresh.figures["landscape"].layout.yaxis.title.text == "x2"
    c["layers"].value = 1
    assert [c[f"width{k}"].layout.display for k in range(3)] == [None, "none", "none"]
    c["m"].value = 1
    assert list(c["out"].options) == [("y0", 0)]


def test_point_changes_reuse_the_model_and_architecture_changes_rebuild_it(fresh):
    model = fresh.model
    fresh.controls["x1"].value = 0.75
    assert fresh.model is model
    fresh.controls["seed"].value = 7
    assert fresh.model is not model
    close(fresh.model[0].weight, hv.mlp([2, 8, 8, 2], seed=7)[0].weight)


def test_slider_echoes_do_not_trigger_updates(fresh):
    updates = fresh.updates
    fresh.controls["x0"].value = 0.2999999999999998  # the browser sends back its rounded value
    fresh.controls["step"].value = fresh.controls["step"].value * (1 + 1e-9)
    assert fresh.updates == updates
    assert fresh.state.step is None  # still "auto"


def test_landscape_and_taylor_model_use_the_point_and_the_hessian(fresh):
    s = fresh.state
    model, x = engine_model(s)
    traces = fresh.figures["landscape"].data
    function, taylor = traces[0], traces[4]
    mid = len(function.x) // 2
    f0 = model(x)[s.out].item()
    assert function.z[mid][mid] == pytest.approx(f0)
    assert taylor.z[mid][mid] == pytest.approx(f0)
    H = hv.hessian(model, x, outputs=s.out).detach().numpy()
    du = function.x[1] - function.x[0]
    second_difference = taylor.z[mid][mid + 1] - 2 * taylor.z[mid][mid] + taylor.z[mid][mid - 1]
    assert second_difference / du**2 == pytest.approx(H[0, 0], rel=1e-6)
    assert list(traces[1].x) == [s.x[0]] and list(traces[1].y) == [s.x[1]]
    fresh.set_state(n=1, x=(0.5,))
    assert [t.name for t in fresh.figures["landscape"].data] == ["y_0", "Taylor model", "the point"]


def test_fd_step_panel(fresh):
    fig = fresh.figures["fdstep"]
    names = [t.name for t in fig.data]
    assert names[:2] == ["float32", "float64"]
    step = hv.default_fd_step(torch.float64, 1.0)
    assert list(fig.data[-1].x) == pytest.approx([step, step])
    assert np.nanmin(fig.data[1].y) < 1e-6 < np.nanmin(fig.data[0].y)  # float64 beats float32
    fresh.controls["step"].value = 1e-3
    assert list(fresh.figures["fdstep"].data[-1].x) == pytest.approx([1e-3, 1e-3])


def test_status_line_says_what_is_on_screen_in_words(fresh):
    text = text_of(fresh.status)
    assert text.startswith("tanh network 2×8×8×2 in float64, output y0 at x = (0.3, -1): saddle")
    assert "Finite differences (h = 1.2e-4) agree with it to " in text
    assert "method auto → structured" in text and text.endswith("ms.")
    fresh.set_state(act="relu")
    assert "flat" in text_of(fresh.status) and "only rounding noise" in text_of(fresh.status)


# -- guidance: tooltips, captions, lessons ------------------------------------------------------


def test_every_control_says_what_it_does(fresh):
    for name, widget in fresh.controls.items():
        assert len(widget.tooltip or "") > 20, name
    for name, caption in fresh._panels.captions.items():
        assert "<details" in caption.value and "<summary>the formula</summary>" in caption.value
        assert len(fresh.captions[name]) > 80, name


@pytest.mark.parametrize("name", LESSONS)
def test_every_lesson_is_a_deep_link(name):
    app = HessianExplorer.from_query(f"lesson={name}")
    assert app.last_error is None and not app.notes.children
    assert app.state == ExplorerState.for_lesson(name).normalized()[0]
    assert app.controls["lesson"].value == name
    assert LESSONS[name].look[:40] in text_of(app.lesson_text)
    assert app.link().startswith(f"?lesson={name}&")
    assert HessianExplorer.from_query(app.query).state == app.state
    assert_figures_match_engine(app)


def _lesson(name: str) -> HessianExplorer:
    return HessianExplorer.from_query(f"lesson={name}")


def test_lesson_relu_exact_hessian_zero_and_fd_marked_as_noise():
    app = _lesson("relu-is-flat")
    exact, fd, _gap, noise = app.figures["hessian"].data
    assert not np.asarray(exact.z).any() and np.asarray(fd.z).any()  # FD: rounding noise
    assert noise.name == "noise" and np.all(np.asarray(noise.z) == 1)  # every cell grey
    assert app.figures["hessian"].layout.coloraxis.cmax == 1.0  # noise does not set the scale
    assert "all noise" in app.figures["hessian"].layout.annotations[1].text
    assert "below the rounding noise floor" in app.captions["hessian"]
    assert "kink" in app.captions["fdstep"]  # read off the error curve


def test_lesson_saddle_point():
    app = _lesson("saddle-point")
    assert app.results.verdict.kind == "saddle"
    assert app.results.eigenvalues[0] < 0 < app.results.eigenvalues[-1]
    land = app.figures["landscape"].data
    mid = len(land[0].x) // 2
    assert land[0].z[mid][mid] == pytest.approx(0, abs=1e-12)  # the curved part f − f₀ − gᵀd


def test_lesson_rounding_vs_truncation():
    app = _lesson("rounding-vs-truncation")
    assert app.results.fd_reading.regime == "round-off"
    assert "left of the dip" in app.captions["fdstep"]
    app.controls["step"].value = 1e-4
    assert app.results.fd_reading.regime == "best"
    app.controls["step"].value = 0.1
    assert app.results.fd_reading.regime == "truncation"


def test_lesson_float32_vs_float64():
    app = _lesson("float32-vs-float64")
    curves = app.results.fd_reading.curves
    assert curves["float32"].best_error > 1e4 * curves["float64"].best_error
    assert "float32's best is" in app.captions["fdstep"]


def test_lesson_hutchinson_is_noisy():
    app = _lesson("hutchinson-is-noisy")
    r = app.results
    few = np.abs(r.hutchinson - r.diagonals).max() / np.abs(r.diagonals).max()
    app.controls["samples"].value = 1024
    r = app.results
    many = np.abs(r.hutchinson - r.diagonals).max() / np.abs(r.diagonals).max()
    assert few > 0.1 and many < few / 3


def test_lesson_wide_vs_deep_shows_each_layers_share():
    app = _lesson("wide-vs-deep")
    shares = app.results.shares
    assert len(shares) == 6 and shares.sum() == pytest.approx(100)
    labels = [a.text for a in app.figures["layers"].layout.annotations]
    for k in range(1, 7):
        shown = "<1%" if 0 < shares[k - 1] < 0.5 else f"{shares[k - 1]:.0f}%"
        assert f"<b>hidden layer {k}</b><br>share {shown}" in labels


def test_choosing_a_lesson_in_the_dropdown_sets_it_up(fresh):
    fresh.controls["lesson"].value = "relu-is-flat"
    assert fresh.state.act == "relu" and fresh.state.lesson == "relu-is-flat"
    assert "ReLU networks are flat" in text_of(fresh.lesson_text)
    fresh.controls["act"].value = "softplus"  # the lesson stays: its text says to do this
    assert fresh.state.lesson == "relu-is-flat"
    fresh.controls["lesson"].value = ""
    assert text_of(fresh.lesson_text) == ""


def test_the_landscape_can_show_the_curved_part(fresh):
    fresh.controls["view"].value = "curvature"
    s = fresh.state
    model, x = engine_model(s)
    function, taylor = fresh.figures["landscape"].data[0], fresh.figures["landscape"].data[4]
    mid = len(function.x) // 2
    assert function.z[mid][mid] == pytest.approx(0, abs=1e-12)
    H = hv.hessian(model, x, outputs=s.out).detach().numpy()
    du = function.x[1] - function.x[0]
    assert taylor.z[mid][mid + 1] == pytest.approx(0.5 * H[0, 0] * du**2, rel=1e-9)
    g = torch.func.jacrev(model)(x)[s.out].detach().numpy()
    f1 = model(x + torch.tensor([du, 0.0], dtype=x.dtype))[s.out].item()
    assert function.z[mid][mid + 1] == pytest.approx(f1 - model(x)[s.out].item() - g[0] * du)


def test_layer_terms_are_labelled_as_the_controls_are(fresh):
    names = [t.name for t in fresh.figures["layers"].data if t.type == "heatmap"]
    assert names == ["hidden layer 1", "hidden layer 2", "Σ terms", "H"]
    assert fresh.controls["width1"].description == "layer 2 width"
    assert "hidden layer 2 is model[3] (Tanh)" in fresh.captions["layers"]


# -- piecewise-linear networks --------------------------------------------------------------------

ZERO_CASES = {
    "relu": dict(act="relu"),
    "linear": dict(act="linear"),
    "no-hidden-layer": dict(layers=()),
    "relu-float32-n5": dict(act="relu", dtype="float32", n=5, x=(0.5, 1, -1, 2, 0)),
}


@pytest.mark.parametrize("changes", ZERO_CASES.values(), ids=ZERO_CASES.keys())
def test_relu_and_linear_networks_give_exact_zeros(fresh, changes):
    assert fresh.set_state(**changes)
    figs = fresh.figures
    assert not np.asarray(figs["hessian"].data[0].z).any()
    assert not np.asarray(figs["diagonal"].data[0].z).any()
    for trace in figs["layers"].data:
        if trace.type == "heatmap":
            assert not np.asarray(trace.z).any()
    explanation = fresh.captions["layers"]
    assert ("ReLU" in explanation) or ("affine" in explanation)
    assert "flat" in figs["spectrum"].layout.title.text
    assert_figures_match_engine(fresh)


# -- errors never reach the user as a traceback ---------------------------------------------------


def test_invalid_values_are_repaired_with_a_note(fresh):
    assert fresh.set_state(n=0, act="nope", layers=(8, 1000))
    assert fresh.state == ExplorerState()
    notes = [label.value for label in fresh.notes.children]
    assert len(notes) == 3 and all(note.startswith("Note: ignored") for note in notes)


@pytest.mark.parametrize(
    "call",
    [lambda a: a.set_state(bogus=1), lambda a: a.set_state("not a state")],
    ids=["unknown-field", "wrong-type"],
)
def test_bad_state_shows_a_message_and_keeps_the_figures(fresh, call):
    before = np.array(fresh.figures["hessian"].data[0].z)
    assert call(fresh) is False
    assert text_of(fresh.message).startswith("Could not finish")
    assert fresh.last_error == text_of(fresh.message)
    np.testing.assert_array_equal(fresh.figures["hessian"].data[0].z, before)


def test_engine_failure_shows_a_message_and_keeps_the_last_good_figures(fresh, monkeypatch):
    before = np.array(fresh.figures["hessian"].data[0].z)

    def broken(*args, **kwargs):
        raise RuntimeError("boom <b>bold</b>\nsecond line")

    monkeypatch.setattr(hv, "hessian", broken)
    fresh.controls["x0"].value = 1.5  # raises nothing
    assert "RuntimeError: boom <b>bold</b>" in text_of(fresh.message)
    assert "<b>" not in fresh.message.value  # shown as text, never as markup
    assert "second line" not in text_of(fresh.message)
    np.testing.assert_array_equal(fresh.figures["hessian"].data[0].z, before)
    monkeypatch.undo()
    assert fresh.set_state(x=(1.5, -1.0))  # the same state again: recomputed now
    assert text_of(fresh.message) == "" and fresh.last_error is None
    assert_figures_match_engine(fresh)


# -- state ⇄ query string -------------------------------------------------------------------------


@st.composite
def states(draw) -> ExplorerState:
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 4))
    return ExplorerState(
        n=n,
        m=m,
        layers=tuple(draw(st.lists(st.integers(1, 64), max_size=6))),
        act=draw(st.sampled_from(hv.ACTIVATIONS)),
        seed=draw(st.integers(0, 2**31 - 1)),
        x=tuple(draw(st.integers(-300, 300)) / 100 for _ in range(n)),
        out=draw(st.integers(0, m - 1)),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        step=draw(st.none() | st.floats(1e-8, 1.0)),
        method=draw(st.sampled_from(hessian_methods())),
        samples=draw(st.integers(1, 1024)),
        plane=(0, 1) if n > 1 else (0, 0),
        view=draw(st.sampled_from(["function", "curvature"])),
        lesson=draw(st.sampled_from(["", *LESSONS])),
    )


@given(states())
@settings(max_examples=200, deadline=None)
def test_query_round_trip_preserves_the_state(state):
    assert state.normalized() == (state, [])
    assert ExplorerState.from_query(state.to_query()) == (state, [])
    assert ExplorerState.from_query("?" + state.to_query()) == (state, [])


def test_explorer_link_reproduces_the_view(fresh):
    fresh.set_state(act="elu", n=3, x=(1, 2, -3), layers=(4, 6), out=1, step=3e-3, plane=(2, 0))
    copy = HessianExplorer.from_query(fresh.link().split("?", 1)[1])
    assert copy.state == fresh.state
    assert copy.link() == fresh.link() == "?" + fresh.query
    assert fresh.controls["link"].value == fresh.link()
    np.testing.assert_array_equal(
        copy.figures["hessian"].data[0].z, fresh.figures["hessian"].data[0].z
    )


#: Query strings a visitor could send; tests/test_dashboard_security.py checks every one (with its
#: own) for defaults and plain-text notes.
HOSTILE = {
    "huge-n": "n=999999999999",
    "negative-n": "n=-3",
    "absurd-width": "layers=100000,8",
    "too-many-layers": "layers=" + ",".join(["8"] * 50),
    "non-numeric": "x=abc,def&seed=xyz&samples=many",
    "script": "act=<script>alert(1)</script>&method=<img src=x onerror=alert(1)>",
    "python": "method=__import__('os').system('ls')",
    "nan-inf": "x=nan,inf&step=nan",
    "negative-step": "step=-1e-3",
    "huge-step": "step=1e300",
    "bad-dtype": "dtype=float16",
    "out-of-range-out": "out=7&m=2",
    "zero-samples": "samples=0",
    "plane": "plane=9,-9",
    "bytes": "%00%ff%fe=%c3%28&n=%00",
    "very-long": "act=" + "a" * 5000,
    "long-value": "x=" + ",".join(["1"] * 300),
    "unknown-keys": "foo=1&bar=<b>2</b>",
    "repeated": "n=3&n=4&n=5",
    "many-fields": "&".join(f"k{i}=1" for i in range(200)),
    "unknown-lesson": "lesson=<script>alert(1)</script>",
    "bad-view": "view=javascript:alert(1)",
}


def test_the_jupyter_login_token_is_no_view_key_and_is_never_shared():
    """A Binder link opens the dashboard with ``?token=…``: no note about it, not in the link."""
    state, notes = ExplorerState.from_query("token=0123abcd&act=sin&foo=1")
    assert state.act == "sin" and notes == ["ignored unknown key 'foo'"]
    assert "token" not in state.to_query() and "0123abcd" not in state.to_query()


def test_pasting_a_link_into_the_share_box_shows_that_view(fresh):
    fresh.controls["link"].value = "http://localhost:8866/voila/render/d.ipynb?act=sin&n=3"
    assert (fresh.state.act, fresh.state.n) == ("sin", 3)
    assert fresh.controls["link"].value == fresh.link()  # normalised back to the full link
    assert fresh.apply_query("?n=0&act=<b>")
    assert fresh.state == ExplorerState()
    assert len(fresh.notes.children) == 2


def test_hostile_query_in_the_explorer_shows_notes_and_no_error():
    app = HessianExplorer.from_query(HOSTILE["script"] + "&n=99")
    notes = [label.value for label in app.notes.children]
    assert any("act" in note for note in notes) and any("n (inputs)" in note for note in notes)
    assert app.last_error is None and app.state.act == "tanh"


@given(st.text(max_size=400))
@settings(max_examples=150, deadline=None)
def test_any_text_parses_without_raising(query):
    state, notes = ExplorerState.from_query(query)
    assert state.normalized()[0] == state
    assert all(isinstance(note, str) for note in notes)


@given(st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=40), max_size=12))
@settings(max_examples=150, deadline=None)
def test_any_values_of_known_keys_parse_without_raising(values):
    state, _ = ExplorerState.from_query(urlencode(values))
    assert state.normalized()[0] == state


# -- display, race, layering ----------------------------------------------------------------------


def test_stable_css_classes(fresh):
    for name, widget in fresh.controls.items():
        assert HessianExplorer.CSS_CLASSES[name] in widget._dom_classes, name
    assert "hv-activation" in fresh.controls["act"]._dom_classes
    assert "hv-x0" in fresh.controls["x0"]._dom_classes
    for name, panel in fresh.panels.items():
        assert f"hv-fig-{name}" in panel.box._dom_classes
        assert len(panel.box.children) == 1  # the plot widget, nothing else
    for widget, css in [(fresh.status, "hv-status"), (fresh.message, "hv-message")]:
        assert css in widget._dom_classes
    assert "hv-app" in fresh.root._dom_classes


def test_plots_follow_their_panels_width(fresh):
    for panel in fresh.panels.values():
        assert panel.plot.config.get("responsive")
        assert "width" not in panel.spec["layout"]  # the panel's width, whatever it is


def test_method_race(fresh):
    entries = fresh.run_race(seconds_per_method=0.0)
    computes_hessian = [k for k, m in hv.METHODS.items() if "hessian" in m.computes]
    assert [e.method for e in entries if e.operation == "hessian"] == computes_hessian
    assert all(e.seconds is not None and e.seconds > 0 for e in entries), entries
    assert fresh.race_progress.value == fresh.race_progress.max == len(entries)
    bars = fresh.figures["race"].data
    assert all(np.isfinite(bar.x).all() for bar in bars)
    assert fresh.race_status.value.startswith("done: fastest is")
    assert not fresh.controls["race"].disabled
    fresh.controls["x0"].value = -2.0  # a new point invalidates the timings
    assert all(np.isnan(bar.x).all() for bar in fresh.figures["race"].data)


def test_warm_up_leaves_no_widget_behind():
    """The dashboard's pre-heated kernel warms up before its visitor comes: every widget that
    made is closed again (the page would build it), and the visitor's explorer refers to no
    closed widget (the page would wait for it forever: "Loading widget...")."""
    from ipywidgets.widgets.widget import _instances

    from hessviz.widgets.explorer import widgets_in
    from hessviz.widgets.figure_widget import plotly_js

    before = set(_instances)
    HessianExplorer.warm_up()
    assert set(_instances) - before <= {m.model_id for m in widgets_in(plotly_js())}
    app = HessianExplorer.from_query("act=sigmoid")
    assert all(widget.comm is not None for widget in widgets_in(*app._parts()))


def test_importing_hessviz_loads_no_plotting_or_widgets():
    code = (
        "import sys, hessviz; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'plotly', 'ipywidgets', 'anywidget', 'hessviz.figures', 'hessviz.widgets'} "
        "or m.startswith(('hessviz.figures', 'hessviz.widgets'))); "
        "assert not bad, bad; "
        "import hessviz.figures; "
        "assert 'ipywidgets' not in sys.modules and 'anywidget' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
