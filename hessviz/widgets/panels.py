"""The explorer's panels: a title, a caption in plain words (formula one click away) and a plot.

:class:`Panels` owns one :class:`~hessviz.widgets.figure_widget.PlotPanel` per entry of
:data:`PANELS` and redraws, from a :class:`~hessviz.widgets.compute.ViewResults`, only the panels
whose inputs changed. Figures come from :mod:`hessviz.figures`; words that depend on the numbers
(the FD caption, why the layer terms vanish) come from :mod:`hessviz.analysis` and are escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle

from hessviz.analysis import scientific
from hessviz.figures import (
    fd_error_spec,
    hessian_spec,
    landscape_spec,
    layer_terms_spec,
    profile_spec,
    second_order_jacobian_spec,
    spectrum_spec,
    vanishing_explanation,
)

from .compute import ViewResults
from .controls import text_of_html
from .display import make_panel


@dataclass(frozen=True)
class PanelText:
    """What a panel says about itself.

    Attributes:
        title: the heading.
        caption: what it shows, in plain words.
        formula: the maths behind it (shown on request, in a ``<details>`` element).
    """

    title: str
    caption: str
    formula: str


#: Panel name → its texts. The name gives the CSS classes ``hv-fig-<name>`` (the plot) and
#: ``hv-panel-<name>`` (the whole panel).
PANELS: dict[str, PanelText] = {
    "hessian": PanelText(
        "1 · The Hessian, exact and estimated",
        "How the chosen output bends as two inputs change together: the exact numbers, the same "
        "matrix estimated from nearby function values (finite differences), and the gap between "
        "them. Grey cells are rounding noise, not curvature.",
        "H_jk = ∂²y_i/∂x_j∂x_k. Finite differences: H_jk ≈ [f(x+he_j+he_k) − f(x+he_j−he_k) − "
        "f(x−he_j+he_k) + f(x−he_j−he_k)] / 4h². A value below the noise floor 10·ε·max(|f|, 1)/h² "
        "is indistinguishable from rounding.",
    ),
    "diagonal": PanelText(
        "2 · How each output bends along each input",
        "Row i, column j: how output y_i curves when only x_j moves. Exact, finite differences, "
        "and Hutchinson's random estimate, whose error shrinks only slowly with more probes.",
        "∂²y_i/∂x_j², the diagonal of each output's Hessian (the second-order Jacobian). "
        "Hutchinson: E[v ⊙ Hv] over random ±1 probes v; error ∝ 1/√probes.",
    ),
    "spectrum": PanelText(
        "3 · Curving up, down, or both: the verdict",
        "The eigenvalues say how much the output curves along its principal directions: all "
        "positive is a bowl (minimum-like), all negative a dome, mixed signs a saddle.",
        "H = V diag(λ) Vᵀ; column k of V is the direction of curvature λ_k. Near x: "
        "f(x+d) ≈ f(x) + gᵀd + ½ Σ_k λ_k (v_kᵀd)².",
    ),
    "layers": PanelText(
        "4 · Where the curvature comes from: one term per hidden layer",
        "Each hidden layer's nonlinearity adds its own piece to the Hessian; the pieces add up to "
        "the whole. The picture shows the network with each layer's share.",
        "H_i = Σ_l J_lᵀ diag(σ''(z_l) ⊙ ∂y_i/∂a_l) J_l, with z_l the pre-activations of layer l, "
        "a_l = σ(z_l) and J_l = ∂z_l/∂x. Share of layer l: ‖H_l‖_F / Σ_k ‖H_k‖_F.",
    ),
    "landscape": PanelText(
        "5 · The landscape around the point, and its quadratic model",
        "The output over a plane of two inputs through the point (arrow: the gradient; lines: the "
        "principal directions, red curving up, blue down), beside the model the Hessian predicts. "
        "Switch to 'curved part' to take value and slope away and see the curvature alone.",
        "Taylor model f(x+d) ≈ f₀ + gᵀd + ½dᵀHd; curved part f(x+d) − f₀ − gᵀd ≈ ½dᵀHd.",
    ),
    "fdstep": PanelText(
        "6 · Finite differences: how the step size decides the error",
        "The error of the finite-difference Hessian for every step h, in float32 and float64. "
        "The sentence below says what these curves show.",
        "Truncation error ∝ h² (the next Taylor term), round-off ∝ ε·|f|/h²; the two balance near "
        "h ≈ ε^¼. A kink within x ± h breaks the Taylor expansion altogether.",
    ),
    "race": PanelText(
        "7 · Which method is fastest here",
        "Times every exact method on this network and point; they all return the same numbers.",
        "Median wall time of repeated calls after a warm-up, one torch thread.",
    ),
}


def caption_html(text: PanelText, extra: str = "", *, title: bool = False) -> str:
    """A panel's caption: the plain words, ``extra`` (escaped), and the formula behind a click;
    with ``title``, the panel's heading first (one widget for both: fewer to build and show)."""
    words = html.escape(text.caption)
    heading = f"<h3 class='hv-panel-title'>{html.escape(text.title)}</h3>" if title else ""
    more = f"<div class='hv-reading'>{html.escape(extra)}</div>" if extra else ""
    return (
        f"{heading}<div class='hv-caption'>{words}</div>{more}"
        f"<details class='hv-formula'><summary>the formula</summary>{html.escape(text.formula)}"
        "</details>"
    )


class Panels:
    """The plots and their captions.

    Attributes:
        plots: panel name → :class:`~hessviz.widgets.figure_widget.PlotPanel`.
        captions: panel name → its title and caption (one HTML widget, class
            ``hv-caption-<name>``).
        sections: panel name → the whole panel (title and caption, extras, plot; class
            ``hv-panel hv-panel-<name>``).
    """

    def __init__(self, extras: dict[str, list[widgets.Widget]] | None = None) -> None:
        extras = extras or {}
        self.plots = {name: make_panel(name) for name in PANELS}
        self.captions: dict[str, widgets.HTML] = {}
        self.sections: dict[str, widgets.VBox] = {}
        self._readings = dict.fromkeys(PANELS, "")
        # Seven panels share one layout and one style: each is a widget the page would build.
        wide = widgets.Layout(width="100%")
        section_layout = widgets.Layout(min_width="0", width="100%")
        style = HTMLStyle()
        for name, text in PANELS.items():
            caption = widgets.HTML(caption_html(text, title=True), layout=wide, style=style)
            caption.add_class(f"hv-caption-{name}")
            self.captions[name] = caption
            section = widgets.VBox(
                [caption, *extras.get(name, []), self.plots[name].box], layout=section_layout
            )
            section.add_class("hv-panel")
            section.add_class(f"hv-panel-{name}")
            self.sections[name] = section

    def caption_text(self, name: str) -> str:
        """Panel ``name``'s caption as plain text, without its title."""
        return text_of_html(caption_html(PANELS[name], self._readings[name]))

    def _caption(self, name: str, extra: str) -> None:
        self._readings[name] = extra
        value = caption_html(PANELS[name], extra, title=True)
        if self.captions[name].value != value:
            self.captions[name].value = value

    def _show(self, name: str, key: object, make_spec: Callable[[], dict]) -> None:
        panel = self.plots[name]
        if panel.rendered_key == key and panel.spec["data"]:
            return
        panel.show(make_spec(), key)

    def render(self, r: ViewResults) -> None:
        """Redraw the panels whose inputs changed (the race has its own :class:`Race`)."""
        s, k = r.state, r.keys
        out = s.out
        noisy = (abs(r.fd_hessian) <= r.noise_floor).all()
        h, floor, gap = (scientific(v) for v in (r.step, r.noise_floor, r.max_fd_error))
        self._caption(
            "hessian",
            f"Finite differences at h = {h}: "
            + (
                f"every value is below the rounding noise floor {floor}, so they say nothing "
                "about curvature here."
                if noisy
                else f"off by at most {gap} (noise floor {floor})."
            ),
        )
        self._show(
            "hessian",
            (k["hessian"], k["fd"], out, r.noise_floor),
            lambda: hessian_spec(
                r.hessian, r.fd_hessian, output=out, step=r.step, noise_floor=r.noise_floor
            ),
        )
        self._show(
            "diagonal",
            (k["diagonal"], k["fd"], k["hutchinson"], r.noise_floor),
            lambda: second_order_jacobian_spec(
                r.diagonals,
                r.fd_diagonals,
                r.hutchinson,
                samples=s.samples,
                noise_floor=r.noise_floor,
            ),
        )
        self._caption("spectrum", f"Verdict for y{out}: {r.verdict.description}.")
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
        sources = "; ".join(
            f"{label} is {source}" for (label, _), source in zip(r.terms, r.term_sources)
        )
        self._caption(
            "layers",
            vanishing_explanation(s.act, len(s.layers))
            or (f"In the PyTorch model, {sources}." if sources else ""),
        )
        self._show(
            "layers",
            (k["terms"], k["hessian"], out),
            lambda: layer_terms_spec(r.terms, r.hessian, output=out, sizes=s.sizes),
        )
        land = r.landscape
        if land.axes is None:
            self._show(
                "landscape",
                (k["grid"], k["hessian"], out, land.part),
                lambda: profile_spec(
                    land.u,
                    land.values,
                    land.taylor,
                    point=float(land.point[0]),
                    gradient=float(land.gradient[0]),
                    curvature=float(land.block[0, 0]),
                    output=out,
                    part=land.part,
                ),
            )
        else:
            self._show(
                "landscape",
                (k["grid"], k["hessian"], out, land.part),
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
                    part=land.part,
                ),
            )
        self._caption("fdstep", r.fd_reading.text)
        self._show(
            "fdstep",
            (k["sweep"], out, r.step),
            lambda: fd_error_spec(
                r.sweep_steps,
                r.sweep_errors,
                chosen_step=r.step,
                best_steps=r.best_steps,
                output=out,
                note="",
            ),
        )
