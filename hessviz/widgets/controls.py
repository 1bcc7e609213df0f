"""The explorer's controls: one widget per state field, with a tooltip, a CSS class and a section.

:class:`Controls` builds the widgets, shows a state on them (:meth:`Controls.show`) and turns a
widget's new value into state changes (:meth:`Controls.changes`). It knows nothing of the engine
or the panels; the explorer wires it.
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets as widgets
from ipywidgets.widgets.widget_description import DescriptionStyle
from ipywidgets.widgets.widget_string import HTMLStyle

import hessviz as hv

from .lessons import LESSONS
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

X_STEP = 0.01
LOG_STEP = 0.1
_DESCRIPTION = {"description_width": "96px"}

#: Control name → CSS class (a browser test selects widgets by these).
CSS_CLASSES: dict[str, str] = {
    "lesson": "hv-lesson",
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
    "view": "hv-view",
    "plane_a": "hv-plane-a",
    "plane_b": "hv-plane-b",
    "link": "hv-link",
    "race": "hv-race",
}

#: Control name → what it does, in words (the tooltip; the first words are the help line).
TOOLTIPS: dict[str, str] = {
    "lesson": "Set up one phenomenon and say what to look at.",
    "n": "How many numbers go into the network: the Hessian is n × n.",
    "m": "How many numbers come out: each output has its own Hessian.",
    "layers": "How many hidden layers (0 makes the network affine: no curvature at all).",
    **{f"width{k}": f"How many units hidden layer {k + 1} has." for k in range(MAX_HIDDEN_LAYERS)},
    "act": "The nonlinearity after each hidden layer; all curvature comes from its second "
    "derivative (ReLU has none).",
    "seed": "Random seed of the weights: another seed, another network of the same shape.",
    **{
        f"x{k}": f"Coordinate x{k} of the point where the derivatives are taken."
        for k in range(N_INPUTS[1])
    },
    "out": "Which output's Hessian the single-output panels show.",
    "dtype": "Number precision of every computation: float32 keeps ~7 digits, float64 ~16.",
    "method": "How the exact Hessian is computed; auto picks the fastest. All give the same "
    "numbers.",
    "step": "Step h of the finite differences f(x ± h): too small and rounding wins, too large "
    "and the curve's shape does.",
    "step_auto": "Use the rule-of-thumb step h = ε^¼ · max(1, |x|) (ε: the precision's rounding "
    "unit).",
    "samples": "How many random probe vectors Hutchinson's estimate of the diagonal averages: "
    "more probes, less noise (error ~ 1/√probes).",
    "view": "Show the output itself, or only its curved part f − f₀ − gᵀd (value and slope taken "
    "away), where a steep slope would hide the curvature.",
    "plane_a": "The coordinate along the landscape's horizontal axis.",
    "plane_b": "The coordinate along the landscape's vertical axis.",
    "link": "A link to this exact view; paste one here and press Enter to open it.",
    "race": "Time every method on this network and point (a few seconds).",
}


def _wide() -> widgets.Layout:
    """A full-width layout of its own, for a control that gets hidden (``display: none`` on a
    shared Layout would hide every control that shares it)."""
    return widgets.Layout(width="100%")


def set_text(widget: widgets.HTML, text: str, style: str = "") -> None:
    """Show plain text in an HTML widget (escaped: it can never become markup)."""
    value = f"<span style='{style}'>{html.escape(text)}</span>" if text else ""
    if widget.value != value:
        widget.value = value


def text_of(widget: widgets.Widget) -> str:
    """The plain text a status/message/info widget shows (for tests and callers)."""
    return text_of_html(widget.value)


def text_of_html(markup: str) -> str:
    """The plain text of an HTML snippet (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup))


def hidden(widget: widgets.Widget, hide: bool) -> None:
    """Hide or show a widget (``display: none``), sending nothing when it does not change."""
    display = "none" if hide else None
    if widget.layout.display != display:
        widget.layout.display = display


def shown(box: widgets.Box, children: list[widgets.Widget]) -> None:
    """Make ``children`` the box's children, sending nothing when they do not change."""
    if box.children != tuple(children):
        box.children = tuple(children)


def method_info(name: str) -> str:
    """One line about a method of the dropdown."""
    if name == "auto":
        return "auto: hessviz picks the fastest exact method (the status line says which)"
    return f"{name}: {hv.METHODS[name].description}"


class Controls:
    """Every control of the explorer, grouped in sections for the sidebar.

    Args:
        on_change: called with ``(name, new value)`` when the user changes a control.
        on_link: called with the text pasted into the share box.
        on_race: called when the race button is pressed.

    Attributes:
        widgets: control name → widget; each has the CSS class :data:`CSS_CLASSES` ``[name]``
            and the tooltip :data:`TOOLTIPS` ``[name]``.
        column: the sidebar (CSS class ``hv-controls``).
        plane_box: the landscape-plane choice (hidden when ``n ≤ 2``).
        method_info: a line about the chosen method.
    """

    def __init__(
        self,
        on_change: Callable[[str, object], None],
        on_link: Callable[[str], None],
        on_race: Callable[[], None],
    ) -> None:
        self._quiet = 0
        self._pushed_step: float | None = None
        c = self.widgets = self._build()
        for name, widget in c.items():
            widget.add_class(CSS_CLASSES[name])
            widget.tooltip = TOOLTIPS[name]
            if name.startswith("width"):
                widget.add_class(f"hv-{name}")
            if re.fullmatch(r"x\d", name):
                widget.add_class("hv-x")
            if name not in ("race", "link"):
                widget.observe(functools.partial(self._changed, on_change, name), names="value")
        c["race"].on_click(lambda _button: on_race())
        c["link"].observe(lambda change: self._quiet or on_link(change["new"]), names="value")
        self.method_info = widgets.HTML(value="", layout=self._layout)
        self.method_info.add_class("hv-method-info")
        self.column = self._build_column()

    # -- construction ----------------------------------------------------------------------------
    def _build(self) -> dict[str, widgets.Widget]:
        # Controls that are never hidden share one layout, and controls of a kind one style:
        # each Layout and Style is a widget model the page builds (~100 fewer here).
        self._layout = wide = widgets.Layout(width="100%")
        described = DescriptionStyle(**_DESCRIPTION)
        slider = {"continuous_update": False, "style": widgets.SliderStyle(**_DESCRIPTION)}
        c: dict[str, widgets.Widget] = {}
        c["lesson"] = widgets.Dropdown(
            options=[("— none: explore freely —", "")]
            + [(lesson.title, key) for key, lesson in LESSONS.items()],
            description="lesson",
            style=described,
            layout=wide,
        )
        c["n"] = widgets.IntSlider(
            min=N_INPUTS[0], max=N_INPUTS[1], description="inputs n", layout=wide, **slider
        )
        c["m"] = widgets.IntSlider(
            min=N_OUTPUTS[0], max=N_OUTPUTS[1], description="outputs m", layout=wide, **slider
        )
        c["layers"] = widgets.IntSlider(
            min=0, max=MAX_HIDDEN_LAYERS, description="hidden layers", layout=wide, **slider
        )
        for k in range(MAX_HIDDEN_LAYERS):
            c[f"width{k}"] = widgets.IntSlider(
                min=WIDTHS[0],
                max=WIDTHS[1],
                value=8,
                description=f"layer {k + 1} width",
                layout=_wide(),
                **slider,
            )
        c["act"] = widgets.Dropdown(
            options=list(hv.ACTIVATIONS),
            description="activation",
            style=described,
            layout=wide,
        )
        c["seed"] = widgets.BoundedIntText(
            min=SEEDS[0],
            max=SEEDS[1],
            description="weight seed",
            continuous_update=False,
            style=described,
            layout=wide,
        )
        for k in range(N_INPUTS[1]):
            c[f"x{k}"] = widgets.FloatSlider(
                min=X_RANGE[0],
                max=X_RANGE[1],
                step=X_STEP,
                description=f"x{k}",
                readout_format=".2f",
                layout=_wide(),
                **slider,
            )
        c["out"] = widgets.Dropdown(
            options=[("y0", 0)], description="output", style=described, layout=wide
        )
        c["dtype"] = widgets.Dropdown(
            options=["float64", "float32"],
            description="precision",
            style=described,
            layout=wide,
        )
        c["method"] = widgets.Dropdown(
            options=list(hessian_methods()),
            description="method",
            style=described,
            layout=wide,
        )
        c["step"] = widgets.FloatLogSlider(
            base=10,
            min=math.log10(STEPS[0]),
            max=math.log10(STEPS[1]),
            step=LOG_STEP,
            description="FD step h",
            readout_format=".1e",
            layout=wide,
            **slider,
        )
        c["step_auto"] = widgets.Checkbox(
            description="rule-of-thumb step (ε^¼)", indent=False, layout=wide
        )
        c["samples"] = widgets.IntSlider(
            min=SAMPLES[0],
            max=SAMPLES[1],
            description="probes",
            layout=wide,
            **slider,
        )
        c["view"] = widgets.ToggleButtons(
            options=[("the output", "function"), ("curved part", "curvature")],
            description="landscape",
            style={**_DESCRIPTION, "button_width": "88px"},
            layout=wide,
        )
        c["plane_a"] = widgets.Dropdown(
            options=[("x0", 0)], description="across", style=described, layout=wide
        )
        c["plane_b"] = widgets.Dropdown(
            options=[("x1", 1)], description="up", style=described, layout=wide
        )
        c["link"] = widgets.Text(
            description="share view", continuous_update=False, style=_DESCRIPTION, layout=wide
        )
        c["race"] = widgets.Button(
            description="Time every method",
            icon="play",
            layout=widgets.Layout(width="auto", min_width="max-content"),
        )
        return c

    def _build_column(self) -> widgets.VBox:
        c = self.widgets
        wide, html_style = self._layout, HTMLStyle()

        def section(title: str, help_text: str, *children: widgets.Widget) -> widgets.VBox:
            header = widgets.HTML(
                f"<div class='hv-section-title'>{html.escape(title)}</div>"
                f"<div class='hv-help'>{html.escape(help_text)}</div>",
                layout=wide,
                style=html_style,
            )
            box = widgets.VBox([header, *children], layout=wide)
            box.add_class("hv-section")
            return box

        self.width_box = widgets.VBox(
            [c[f"width{k}"] for k in range(MAX_HIDDEN_LAYERS)], layout=wide
        )
        self.x_box = widgets.VBox([c[f"x{k}"] for k in range(N_INPUTS[1])], layout=wide)
        self.plane_box = widgets.VBox(  # hidden when n <= 2: a layout of its own
            [c["plane_a"], c["plane_b"]], layout=widgets.Layout(width="100%")
        )
        column = widgets.VBox(
            [
                section(
                    "Network",
                    "Shape of the network y = f(x). Hover over a control for what it does.",
                    c["n"],
                    c["m"],
                    c["layers"],
                    self.width_box,
                    c["act"],
                    c["seed"],
                ),
                section(
                    "Point and output",
                    "Where the second derivatives are taken, and of which output.",
                    self.x_box,
                    c["out"],
                ),
                section(
                    "Numerics",
                    "Precision, the exact method, and the two estimates: finite differences and "
                    "Hutchinson's random probes.",
                    c["dtype"],
                    c["method"],
                    self.method_info,
                    c["step"],
                    c["step_auto"],
                    c["samples"],
                ),
                section("Landscape", "What the landscape panel draws.", c["view"], self.plane_box),
                section(
                    "Share this view", "Copy the link, or paste one and press Enter.", c["link"]
                ),
            ],
        )
        column.add_class("hv-controls")
        return column

    # -- state → widgets -------------------------------------------------------------------------
    @contextmanager
    def quietly(self):
        """Set controls without their observers treating it as a user change."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def show(self, s: ExplorerState, *, link: str, step: float) -> None:
        """Make every control show the state ``s`` (and hide what does not apply).

        Args:
            link: the share link of ``s``.
            step: the FD step in use (the default one when ``s.step`` is ``None``).
        """
        c = self.widgets

        def put(name: str, attribute: str, value) -> None:
            widget = c[name]
            if getattr(widget, attribute) != value:
                setattr(widget, attribute, value)

        with self.quietly():
            for name in ("n", "m", "act", "seed", "dtype", "method", "samples", "view", "lesson"):
                put(name, "value", getattr(s, name))
            put("layers", "value", len(s.layers))
            for k in range(MAX_HIDDEN_LAYERS):
                if k < len(s.layers):
                    put(f"width{k}", "value", s.layers[k])
                hidden(c[f"width{k}"], k >= len(s.layers))
            for k in range(N_INPUTS[1]):
                if k < s.n:
                    put(f"x{k}", "value", s.x[k])
                hidden(c[f"x{k}"], k >= s.n)
            put("out", "options", [(f"y{i}", i) for i in range(s.m)])
            put("out", "value", s.out)
            coordinates = [(f"x{j}", j) for j in range(s.n)]
            put("plane_a", "options", coordinates)
            put("plane_b", "options", coordinates)
            put("plane_a", "value", s.plane[0])
            put("plane_b", "value", s.plane[1])
            hidden(self.plane_box, s.n <= 2)
            # A box holds only the controls that show: the page builds no view (a slider's is
            # one of the costliest) for a control nobody sees, until it is needed.
            shown(self.width_box, [c[f"width{k}"] for k in range(len(s.layers))])
            shown(self.x_box, [c[f"x{k}"] for k in range(s.n)])
            shown(self.plane_box, [] if s.n <= 2 else [c["plane_a"], c["plane_b"]])
            self._pushed_step = step
            put("step", "value", step)
            put("step_auto", "value", s.step is None)
            put("link", "value", link)
            set_text(self.method_info, method_info(s.method))

    # -- widgets → state -------------------------------------------------------------------------
    def _changed(self, on_change: Callable, name: str, change: dict) -> None:
        if not self._quiet:
            on_change(name, change["new"])

    def changes(self, name: str, value, s: ExplorerState) -> dict | None:
        """The state changes a new control value means (``None``: nothing to do).

        Raises:
            hv.HessvizError: for a value no control can send (a page bypassing its bounds).
        """
        c = self.widgets
        if name == "n":
            if not N_INPUTS[0] <= value <= N_INPUTS[1]:
                # Only a page that bypasses the slider's bounds sends this: refused with a note.
                return {"n": value}
            old = list(s.x)
            x = old[:value] + [c[f"x{k}"].value for k in range(len(old), value)]
            return {"n": value, "x": tuple(x)}
        if name == "layers":
            if not 0 <= value <= MAX_HIDDEN_LAYERS:
                raise hv.HessvizError(
                    f"a network has 0–{MAX_HIDDEN_LAYERS} hidden layers here, not {value}."
                )
            return {"layers": tuple(c[f"width{k}"].value for k in range(value))}
        if name.startswith("width"):
            k = int(name[5:])
            if k >= len(s.layers):
                return None
            return {"layers": s.layers[:k] + (value,) + s.layers[k + 1 :]}
        if re.fullmatch(r"x\d", name):
            k = int(name[1:])
            if k >= s.n or abs(value - s.x[k]) < 0.4 * X_STEP:
                return None  # a slider echoing its own rounded value back, not a user change
            return {"x": s.x[:k] + (value,) + s.x[k + 1 :]}
        if name == "step":
            pushed = self._pushed_step
            if pushed and abs(math.log10(value) - math.log10(pushed)) < 0.4 * LOG_STEP:
                return None  # rounding echo of the value the explorer set
            return {"step": float(f"{value:.3g}")}
        if name == "step_auto":
            return {"step": None if value else float(f"{c['step'].value:.3g}")}
        if name == "plane_a":
            return {"plane": (value, s.plane[1])}
        if name == "plane_b":
            return {"plane": (s.plane[0], value)}
        return {name: value}  # m, act, seed, out, dtype, method, samples, view
