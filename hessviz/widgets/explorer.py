"""``HessianExplorer``: controls, seven panels and a status line, wired to the engine.

The explorer owns its controls, an :class:`~hessviz.widgets.state.ExplorerState` and one
long-lived FigureWidget per panel. A control change becomes a new state; the
:class:`~hessviz.widgets.compute.Pipeline` recomputes only the stages whose inputs changed; the
panels whose inputs changed are redrawn in place. All maths comes from ``hessviz`` (and the numpy
readers in ``hessviz.figures.curvature``); this module only wires.

Usage (a notebook or a Voila dashboard)::

    from hessviz.widgets import HessianExplorer
    app = HessianExplorer.from_query(os.environ.get("QUERY_STRING", ""))
    display(app.widget)
"""

from __future__ import annotations

import functools
import html
import math
import re
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets as widgets
import torch

import hessviz as hv
from hessviz.figures import (
    RaceEntry,
    fd_error_spec,
    hessian_spec,
    landscape_spec,
    layer_terms_spec,
    profile_spec,
    race_spec,
    second_order_jacobian_spec,
    spectrum_spec,
    vanishing_explanation,
)

from .compute import DEFAULT_THREADS, Pipeline, ViewResults, torch_threads
from .display import FigurePanel, ResizeNudge
from .errors import ErrorGuard
from .state import (
    MAX_HIDDEN_LAYERS,
    N_INPUTS,
    N_OUTPUTS,
    SAMPLES,
    SEEDS,
    STEPS,
    WIDTHS,
    X_RANGE,
    ExplorerState,
    hessian_methods,
)

#: Panel name → (title, one-line explanation). The name gives the CSS class ``hv-fig-<name>``.
PANELS: dict[str, tuple[str, str]] = {
    "hessian": (
        "1 · Exact Hessian vs finite differences",
        "The chosen output's Hessian from the engine, the same matrix from central finite "
        "differences, and their gap on a log colour scale.",
    ),
    "diagonal": (
        "2 · Second-order Jacobian: diagonals of every output",
        "Row i holds ∂²y_i/∂x_j²: exact, finite differences, and Hutchinson's estimate "
        "E[v ⊙ Hv] with Rademacher probes, whose error shrinks like 1/√samples.",
    ),
    "spectrum": (
        "3 · Eigenvalues and the curvature verdict",
        "The sign pattern of the eigenvalues says how the output curves around the point; the "
        "eigenvectors are the directions of pure curvature.",
    ),
    "layers": (
        "4 · Per-layer decomposition",
        "The structured engine writes the Hessian as one term per activation layer, "
        "J_lᵀ diag(σ''(z_l) ⊙ ∂y/∂a_l) J_l; the terms add up to the full Hessian.",
    ),
    "landscape": (
        "5 · Landscape and the second-order Taylor model",
        "The output around the point in the plane of two coordinates, with the gradient and the "
        "principal curvature directions; beside it the quadratic model built from the Hessian.",
    ),
    "fdstep": (
        "6 · Finite-difference error vs step",
        "Why the step matters: too large and truncation dominates, too small and round-off does.",
    ),
    "race": (
        "7 · Method race",
        "Times every registered method on the current model and point (takes a few seconds).",
    ),
}

#: Seconds of repeated calls per method in the race (at least 3 calls, at most 50).
RACE_SECONDS_PER_METHOD = 0.15

_X_STEP = 0.01
_LOG_STEP = 0.1
_DESCRIPTION = {"description_width": "95px"}


def _set_text(widget: widgets.HTML, text: str, style: str = "") -> None:
    """Show plain text in an HTML widget (escaped: it can never become markup)."""
    value = f"<span style='{style}'>{html.escape(text)}</span>" if text else ""
    if widget.value != value:
        widget.value = value


def text_of(widget: widgets.Widget) -> str:
    """The plain text a status/message/info widget shows (for tests and callers)."""
    return html.unescape(re.sub(r"<[^>]*>", "", widget.value))


def _hidden(widget: widgets.Widget, hidden: bool) -> None:
    display = "none" if hidden else None
    if widget.layout.display != display:
        widget.layout.display = display


def _median_seconds(call: Callable[[], object], budget: float) -> float:
    """Median wall time of ``call`` after one warm-up, over ≥ 3 calls or ``budget`` seconds."""
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class HessianExplorer:
    """The interactive explorer of input Hessians of small MLPs.

    Args:
        state: the initial view (repaired if invalid; see :meth:`ExplorerState.normalized`).
        notes: plain-text notes to show at the start (e.g. from parsing a query string).
        base_url: prefix of :meth:`link` (e.g. the dashboard's URL).
        threads: torch intra-op threads while the explorer computes (default 1, see
            :data:`hessviz.widgets.compute.DEFAULT_THREADS`); ``None`` keeps torch's setting.

    Attributes:
        controls: control name → widget (``"act"``, ``"x0"``, ``"layers"``, …); each has the
            CSS class ``hv-<name>`` listed in :data:`CSS_CLASSES`.
        panels: panel name → :class:`~hessviz.widgets.display.FigurePanel`.
        results: the :class:`~hessviz.widgets.compute.ViewResults` on display (``None`` before the
            first successful update).
        last_update_seconds: wall time of the last update (compute + redraw).
        updates: number of successful updates.

    Example:
        >>> app = HessianExplorer.from_query("act=relu&layers=4&n=2")
        >>> float(abs(app.results.hessians).max()), app.state.layers
        (0.0, (4,))
    """

    #: Control name → CSS class (a browser test selects widgets by these).
    CSS_CLASSES: dict[str, str] = {
        "n": "hv-n",
        "m": "hv-outputs",
        "layers": "hv-layers",
        **{f"width{k}": "hv-width" for k in range(MAX_HIDDEN_LAYERS)},
        "act": "hv-activation",
        "seed": "hv-seed",
        **{f"x{k}": f"hv-x{k}" for k in range(N_INPUTS[1])},
        "out": "hv-output",
        "dtype": "hv-dtype",
        "step": "hv-step",
        "step_auto": "hv-step-auto",
        "method": "hv-method",
        "samples": "hv-samples",
        "plane_a": "hv-plane-a",
        "plane_b": "hv-plane-b",
        "link": "hv-link",
        "race": "hv-race",
    }

    def __init__(
        self,
        state: ExplorerState | None = None,
        *,
        notes: tuple[str, ...] | list[str] = (),
        base_url: str = "",
        threads: int | None = DEFAULT_THREADS,
    ) -> None:
        self.base_url = base_url
        self.results: ViewResults | None = None
        self.last_update_seconds: float | None = None
        self.updates = 0
        self._pipeline = Pipeline(threads=threads)
        self._quiet = 0
        self._pushed: dict[str, float] = {}
        self._race_key: object = None
        self._build_status()
        self._guard = ErrorGuard(self._show_message)
        initial = state if isinstance(state, ExplorerState) else ExplorerState()
        self._state, repairs = initial.normalized()
        if state is not None and not isinstance(state, ExplorerState):
            repairs.insert(0, "ignored a state that is not an ExplorerState; showing the default")
        self._build_controls()
        self._build_panels()
        self.root = self._build_layout()
        self._set_notes([*notes, *repairs])
        self._push_controls()
        self._guard.run("drawing the first view", self._refresh)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_query(cls, query: str | None, **kwargs) -> HessianExplorer:
        """An explorer showing the view a URL query string describes (never raises on bad input).

        Invalid or hostile values fall back to defaults; the notes say which, in plain text.
        """
        state, notes = ExplorerState.from_query(query)
        return cls(state, notes=notes, **kwargs)

    def _build_status(self) -> None:
        # HTML widgets so that long lines wrap; every value is escaped (see _set_text).
        self.status = widgets.HTML(value="", layout=widgets.Layout(width="100%"))
        self.status.add_class("hv-status")
        self.message = widgets.HTML(value="", layout=widgets.Layout(width="100%"))
        self.message.add_class("hv-message")
        self.notes = widgets.VBox([], layout=widgets.Layout(width="100%"))
        self.notes.add_class("hv-notes")
        self._note_labels: list[widgets.Label] = []

    def _build_controls(self) -> None:
        slider = {"continuous_update": False, "style": _DESCRIPTION}
        c: dict[str, widgets.Widget] = {}
        c["n"] = widgets.IntSlider(
            min=N_INPUTS[0], max=N_INPUTS[1], description="inputs n", **slider
        )
        c["m"] = widgets.IntSlider(
            min=N_OUTPUTS[0], max=N_OUTPUTS[1], description="outputs m", **slider
        )
        c["layers"] = widgets.IntSlider(
            min=0, max=MAX_HIDDEN_LAYERS, description="hidden layers", **slider
        )
        for k in range(MAX_HIDDEN_LAYERS):
            c[f"width{k}"] = widgets.IntSlider(
                min=WIDTHS[0], max=WIDTHS[1], value=8, description=f"width {k + 1}", **slider
            )
        c["act"] = widgets.Dropdown(
            options=list(hv.ACTIVATIONS), description="activation", style=_DESCRIPTION
        )
        c["seed"] = widgets.BoundedIntText(
            min=SEEDS[0],
            max=SEEDS[1],
            description="weight seed",
            continuous_update=False,
            style=_DESCRIPTION,
        )
        for k in range(N_INPUTS[1]):
            c[f"x{k}"] = widgets.FloatSlider(
                min=X_RANGE[0],
                max=X_RANGE[1],
                step=_X_STEP,
                description=f"x{k}",
                readout_format=".2f",
                **slider,
            )
        c["out"] = widgets.Dropdown(options=[("y0", 0)], description="output", style=_DESCRIPTION)
        c["dtype"] = widgets.Dropdown(
            options=["float64", "float32"], description="precision", style=_DESCRIPTION
        )
        c["method"] = widgets.Dropdown(
            options=list(hessian_methods()), description="method", style=_DESCRIPTION
        )
        c["step"] = widgets.FloatLogSlider(
            base=10,
            min=math.log10(STEPS[0]),
            max=math.log10(STEPS[1]),
            step=_LOG_STEP,
            description="FD step h",
            readout_format=".1e",
            **slider,
        )
        c["step_auto"] = widgets.Checkbox(description="auto step (ε^¼)", indent=True)
        c["samples"] = widgets.IntSlider(
            min=SAMPLES[0], max=SAMPLES[1], description="Hutchinson", **slider
        )
        c["plane_a"] = widgets.Dropdown(
            options=[("x0", 0)], description="plane", style=_DESCRIPTION
        )
        c["plane_b"] = widgets.Dropdown(options=[("x1", 1)], description="", style=_DESCRIPTION)
        c["link"] = widgets.Text(
            description="share view", continuous_update=False, style=_DESCRIPTION
        )
        c["race"] = widgets.Button(
            description="Run the method race", icon="play", layout=widgets.Layout(width="auto")
        )
        for name, widget in c.items():
            widget.add_class(self.CSS_CLASSES[name])
            if name.startswith("width"):
                widget.add_class(f"hv-{name}")
            if name.startswith("x"):
                widget.add_class("hv-x")
            if name not in ("race", "link"):
                widget.observe(functools.partial(self._control_changed, name), names="value")
        c["race"].on_click(lambda _button: self.run_race())
        c["link"].observe(self._link_edited, names="value")
        self.method_info = widgets.HTML(value="", layout=widgets.Layout(width="100%"))
        self.method_info.add_class("hv-method-info")
        self.controls = c
        self.race_progress = widgets.IntProgress(value=0, min=0, max=1, description="race")
        self.race_progress.add_class("hv-race-progress")
        self.race_status = widgets.Label(value="")
        self.race_status.add_class("hv-race-status")

    @staticmethod
    def _method_info(name: str) -> str:
        if name == "auto":
            return "auto: hessviz picks (the status line says which)"
        return f"{name}: {hv.METHODS[name].description}"

    def _build_panels(self) -> None:
        self.panels = {name: FigurePanel(name) for name in PANELS}

    def _build_layout(self) -> widgets.Widget:
        c = self.controls

        def section(title: str, *children: widgets.Widget) -> widgets.VBox:
            header = widgets.HTML(f"<b>{title}</b>")
            return widgets.VBox([header, *children])

        self._width_box = widgets.VBox([c[f"width{k}"] for k in range(MAX_HIDDEN_LAYERS)])
        self._x_box = widgets.VBox([c[f"x{k}"] for k in range(N_INPUTS[1])])
        # The whole section, heading included, is hidden when n ≤ 2 (there is no plane to pick).
        self._plane_box = section("Landscape plane", c["plane_a"], c["plane_b"])
        column = widgets.VBox(
            [
                section(
                    "Network", c["n"], c["m"], c["layers"], self._width_box, c["act"], c["seed"]
                ),
                section("Point and output", self._x_box, c["out"]),
                section(
                    "Numerics",
                    c["dtype"],
                    c["method"],
                    self.method_info,
                    c["step"],
                    c["step_auto"],
                    c["samples"],
                ),
                self._plane_box,
                section("Share this view", c["link"]),
            ],
            layout=widgets.Layout(width="340px", min_width="340px"),
        )
        column.add_class("hv-controls")
        blocks: list[widgets.Widget] = [
            widgets.VBox([self.status, self.message, self.notes]),
        ]
        for name, (title, explanation) in PANELS.items():
            header = widgets.HTML(f"<h3 style='margin:12px 0 2px 0'>{title}</h3>{explanation}")
            extra: list[widgets.Widget] = []
            if name == "race":
                extra = [widgets.HBox([c["race"], self.race_progress, self.race_status])]
            blocks.append(widgets.VBox([header, *extra, self.panels[name].box]))
        content = widgets.VBox(blocks, layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        title = widgets.HTML(
            "<h2 style='margin:4px 0'>hessviz explorer</h2>"
            "Second derivatives of a small network with respect to its input: change the "
            "network or the point and watch the Hessian, its estimates and what it means."
        )
        root = widgets.VBox([title, widgets.HBox([column, content]), ResizeNudge()])
        root.add_class("hv-app")
        return root

    # -- public ----------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.Widget:
        """The root widget to ``display``; its FigureWidgets are synced for display first."""
        for panel in self.panels.values():
            panel.sync()
        return self.root

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def state(self) -> ExplorerState:
        """The current (valid) state."""
        return self._state

    @property
    def figures(self) -> dict[str, widgets.Widget]:
        """Panel name → its current FigureWidget."""
        return {name: panel.figure for name, panel in self.panels.items()}

    @property
    def model(self) -> torch.nn.Sequential:
        """The network on display, in the state's precision."""
        return self._pipeline.model(self._state)

    @property
    def x(self) -> torch.Tensor:
        """The input point on display, in the state's precision."""
        return self._pipeline.point(self._state)

    @property
    def last_error(self) -> str | None:
        """The message of the last failed action, or ``None`` after a success."""
        return self._guard.last_error

    @property
    def query(self) -> str:
        """The current view as a query string (see :meth:`ExplorerState.to_query`)."""
        return self._state.to_query()

    def link(self, base_url: str | None = None) -> str:
        """A link that reproduces the current view: ``base_url + "?" + query``."""
        return f"{self.base_url if base_url is None else base_url}?{self.query}"

    def set_state(self, state: ExplorerState | None = None, /, **changes) -> bool:
        """Show another view: a whole state and/or field changes (``app.set_state(act="relu")``).

        Invalid values are repaired with a note, failures are shown as a message; nothing raises.

        Returns:
            Whether the view was updated without error.
        """
        return self._guard.run("applying the new state", self._apply, state, changes)

    def apply_query(self, query: str) -> bool:
        """Show the view of a query string or link (invalid values fall back with notes)."""
        query = query.split("?", 1)[1] if "?" in query else query
        state, notes = ExplorerState.from_query(query)
        return self._guard.run("applying the query", self._apply, state, {}, notes_from=notes)

    def _link_edited(self, change: dict) -> None:
        """A link pasted into the share box (and Enter) shows that view."""
        if not self._quiet and change["new"] != self.link():
            self.apply_query(change["new"])

    # -- state changes ---------------------------------------------------------------------------
    def _apply(self, state, changes: dict, notes_from: list[str] | None = None) -> None:
        base = self._state if state is None else state
        if not isinstance(base, ExplorerState):
            raise hv.HessvizError(f"expected an ExplorerState, got {type(base).__name__}.")
        unknown = set(changes) - set(ExplorerState.__dataclass_fields__)
        if unknown:
            raise hv.HessvizError(
                f"unknown state field(s) {', '.join(sorted(unknown))}; the fields are "
                f"{', '.join(ExplorerState.__dataclass_fields__)}."
            )
        new, repairs = base.replace(**changes).normalized()
        self._set_notes((notes_from or []) + repairs)
        if new == self._state and self.results is not None and self._guard.last_error is None:
            self._push_controls()
            return
        self._state = new
        self._push_controls()
        self._refresh()

    def _control_changed(self, name: str, change: dict) -> None:
        if self._quiet:
            return
        self._guard.run(f"applying the change of {name}", self._apply_control, name, change["new"])

    def _apply_control(self, name: str, value) -> None:
        s = self._state
        c = self.controls
        if name == "n":
            if not N_INPUTS[0] <= value <= N_INPUTS[1]:
                # Only a page that bypasses the slider's bounds sends this: refused with a note.
                changes = {"n": value}
            else:
                old = list(s.x)
                x = old[:value] + [c[f"x{k}"].value for k in range(len(old), value)]
                changes = {"n": value, "x": tuple(x)}
        elif name == "layers":
            if not 0 <= value <= MAX_HIDDEN_LAYERS:
                raise hv.HessvizError(
                    f"a network has 0–{MAX_HIDDEN_LAYERS} hidden layers here, not {value}."
                )
            changes = {"layers": tuple(c[f"width{k}"].value for k in range(value))}
        elif name.startswith("width"):
            k = int(name[5:])
            if k >= len(s.layers):
                return
            changes = {"layers": s.layers[:k] + (value,) + s.layers[k + 1 :]}
        elif name.startswith("x"):
            k = int(name[1:])
            if k >= s.n or abs(value - s.x[k]) < 0.4 * _X_STEP:
                return  # a slider echoing its own rounded value back, not a user change
            changes = {"x": s.x[:k] + (value,) + s.x[k + 1 :]}
        elif name == "step":
            pushed = self._pushed.get("step")
            if pushed and abs(math.log10(value) - math.log10(pushed)) < 0.4 * _LOG_STEP:
                return  # rounding echo of the value the explorer set
            changes = {"step": float(f"{value:.3g}")}
        elif name == "step_auto":
            changes = {"step": None if value else float(f"{c['step'].value:.3g}")}
        elif name == "plane_a":
            changes = {"plane": (value, s.plane[1])}
        elif name == "plane_b":
            changes = {"plane": (s.plane[0], value)}
        else:  # m, act, seed, out, dtype, method, samples
            changes = {name: value}
        self._apply(None, changes)

    @contextmanager
    def _quietly(self):
        """Set controls without their observers treating it as a user change."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _push_controls(self) -> None:
        """Make every control show the state (and hide what does not apply)."""
        s = self._state
        c = self.controls

        def put(name: str, attribute: str, value) -> None:
            widget = c[name]
            if getattr(widget, attribute) != value:
                setattr(widget, attribute, value)

        with self._quietly():
            for name in ("n", "m", "act", "seed", "dtype", "method", "samples"):
                put(name, "value", getattr(s, name))
            put("layers", "value", len(s.layers))
            for k in range(MAX_HIDDEN_LAYERS):
                if k < len(s.layers):
                    put(f"width{k}", "value", s.layers[k])
                _hidden(c[f"width{k}"], k >= len(s.layers))
            for k in range(N_INPUTS[1]):
                if k < s.n:
                    put(f"x{k}", "value", s.x[k])
                _hidden(c[f"x{k}"], k >= s.n)
            put("out", "options", [(f"y{i}", i) for i in range(s.m)])
            put("out", "value", s.out)
            coordinates = [(f"x{j}", j) for j in range(s.n)]
            put("plane_a", "options", coordinates)
            put("plane_b", "options", coordinates)
            put("plane_a", "value", s.plane[0])
            put("plane_b", "value", s.plane[1])
            _hidden(self._plane_box, s.n <= 2)
            step = s.step if s.step is not None else Pipeline.default_step(s, s.dtype)
            self._pushed["step"] = step
            put("step", "value", step)
            put("step_auto", "value", s.step is None)
            put("link", "value", self.link())
            _set_text(self.method_info, self._method_info(s.method))

    # -- updates ---------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Recompute what changed and redraw what changed; the status line says what happened."""
        start = time.perf_counter()
        results = self._pipeline.run(self._state)
        self._render(results)
        self.results = results
        self.last_update_seconds = time.perf_counter() - start
        self.updates += 1
        _set_text(self.status, self._status_text(results, self.last_update_seconds))
        if self._race_key != self._race_identity():
            self._reset_race()

    def _render(self, r: ViewResults) -> None:
        s, k = r.state, r.keys
        out = s.out
        self._show(
            "hessian",
            (k["hessian"], k["fd"], out),
            lambda: hessian_spec(r.hessian, r.fd_hessian, output=out, step=r.step),
        )
        self._show(
            "diagonal",
            (k["diagonal"], k["fd"], k["hutchinson"]),
            lambda: second_order_jacobian_spec(
                r.diagonals, r.fd_diagonals, r.hutchinson, samples=s.samples
            ),
        )
        self._show(
            "spectrum",
            (k["hessian"], out),
            lambda: spectrum_spec(
                r.eigenvalues,
                r.eigenvectors,
                verdict=r.verdict.kind,
                description=r.verdict.description,
                output=out,
            ),
        )
        self._show(
            "layers",
            (k["terms"], k["hessian"], out),
            lambda: layer_terms_spec(
                r.terms,
                r.hessian,
                output=out,
                note=vanishing_explanation(s.act, len(s.layers)),
            ),
        )
        land = r.landscape
        if land.axes is None:
            self._show(
                "landscape",
                (k["grid"], k["hessian"], out),
                lambda: profile_spec(
                    land.u,
                    land.values,
                    land.taylor,
                    point=float(land.point[0]),
                    gradient=float(land.gradient[0]),
                    curvature=float(land.block[0, 0]),
                    output=out,
                ),
            )
        else:
            self._show(
                "landscape",
                (k["grid"], k["hessian"], out),
                lambda: landscape_spec(
                    land.u,
                    land.v,
                    land.values,
                    land.taylor,
                    point=land.point,
                    gradient=land.gradient,
                    hessian=land.block,
                    axes=land.axes,
                    output=out,
                ),
            )
        self._show(
            "fdstep",
            (k["sweep"], out, r.step),
            lambda: fd_error_spec(
                r.sweep_steps,
                r.sweep_errors,
                chosen_step=r.step,
                best_steps=r.best_steps,
                output=out,
            ),
        )

    def _show(self, name: str, key: object, make_spec: Callable[[], dict]) -> None:
        panel = self.panels[name]
        if panel.rendered_key == key and panel.spec["data"]:
            return
        panel.show(make_spec(), key)

    def _status_text(self, r: ViewResults, seconds: float) -> str:
        s = r.state
        m, n = r.hessians.shape[:2]
        method = f"auto → {r.method}" if s.method == "auto" else r.method
        return (
            f"{s.act} network {'×'.join(map(str, s.sizes))} in {s.dtype}: computed the exact "
            f"Hessians ({m}×{n}×{n}, {method}), finite differences (h = {r.step:.2g}), "
            f"diagonals, Hutchinson ({s.samples} probes), {len(r.terms)} layer term(s). "
            f"max|exact − FD| = {r.max_fd_error:.2g} for y{s.out}. "
            f"Updated in {1e3 * seconds:.0f} ms."
        )

    def _show_message(self, text: str | None) -> None:
        _set_text(self.message, text or "", style="color:#b00020")

    def _set_notes(self, notes: list[str]) -> None:
        # Labels are reused, never replaced: a replaced widget (with its layout and style) would
        # stay alive in the kernel and in the page for as long as the session lasts.
        texts = [f"Note: {note}" for note in notes]
        while len(self._note_labels) < len(texts):
            label = widgets.Label(value="")  # plain text: a note can never become markup
            label.add_class("hv-note")
            self._note_labels.append(label)
        for label, text in zip(self._note_labels, texts):
            if label.value != text:
                label.value = text
        shown = tuple(self._note_labels[: len(texts)])
        if self.notes.children != shown:
            self.notes.children = shown

    # -- the race --------------------------------------------------------------------------------
    def _race_plan(self) -> list[RaceEntry]:
        plan = [
            RaceEntry(name, "hessian", None)
            for name, method in hv.METHODS.items()
            if "hessian" in method.computes
        ]
        plan += [
            RaceEntry(name, "diagonal", None)
            for name, method in hv.METHODS.items()
            if "diagonal" in method.computes
        ]
        return plan

    def _race_identity(self) -> tuple:
        s = self._state
        return (s.architecture, s.dtype, s.x)

    def _race_subtitle(self) -> str:
        s = self._state
        return (
            f"{s.act} network {'×'.join(map(str, s.sizes))}, {s.dtype}, one input point, "
            f"{self._pipeline.threads or torch.get_num_threads()} torch thread(s); "
            "median of repeated calls after a warm-up."
        )

    def _reset_race(self) -> None:
        self._race_key = self._race_identity()
        self.race_progress.value = 0
        self.race_status.value = "Press the button to time every method on this model."
        self.panels["race"].show(
            race_spec(self._race_plan(), subtitle=self._race_subtitle()), key=self._race_key
        )

    def run_race(self, seconds_per_method: float = RACE_SECONDS_PER_METHOD) -> list[RaceEntry]:
        """Time every registered method on the current model and point, updating the panel live.

        Args:
            seconds_per_method: time budget of the repeated calls of each method.

        Returns:
            The timed entries (``seconds=None`` where a method failed; the note says why).
        """
        entries = self._race_plan()
        with torch_threads(self._pipeline.threads):
            self._guard.run("running the method race", self._race, entries, seconds_per_method)
        self.controls["race"].disabled = False
        return entries

    def _race(self, entries: list[RaceEntry], budget: float) -> None:
        button = self.controls["race"]
        button.disabled = True
        model, x = self.model, self.x
        self.race_progress.max = len(entries)
        self.race_progress.value = 0
        calls = {"hessian": hv.hessian, "diagonal": hv.hessian_diagonal}
        for i, entry in enumerate(entries):
            self.race_status.value = (
                f"timing {entry.method} ({entry.operation}) — {i + 1}/{len(entries)}"
            )
            call = functools.partial(calls[entry.operation], model, x, method=entry.method)
            try:
                seconds = _median_seconds(call, budget)
                entries[i] = RaceEntry(entry.method, entry.operation, seconds)
            except hv.HessvizError as error:
                entries[i] = RaceEntry(entry.method, entry.operation, None, f"n/a: {error}"[:80])
            self.race_progress.value = i + 1
            self.panels["race"].show(
                race_spec(entries, subtitle=self._race_subtitle()), key=("race", i)
            )
        done = [e for e in entries if e.seconds is not None]
        if done:
            best = min(done, key=lambda e: e.seconds)
            self.race_status.value = (
                f"done: fastest is {best.method} ({best.operation}, {1e3 * best.seconds:.3g} ms)"
            )
        self._race_key = self._race_identity()
