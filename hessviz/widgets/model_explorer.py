"""The explorer for a user's own model: :meth:`HessianExplorer.for_model` returns a
:class:`ModelExplorer`.

It shows every panel that applies to the model and its input (see
:mod:`hessviz.widgets.model_compute` for the engine calls and :data:`MODEL_PANELS` for the
panels); controls pick the output, move the point (vector inputs) or pick a pixel (images). The
numbers come from ``hessviz`` and :mod:`hessviz.analysis`, the figures from
:mod:`hessviz.figures`; this module only wires them. For notebooks and JupyterLab: the public
dashboard has no code entry.

Usage::

    from hessviz.widgets import HessianExplorer
    explorer = HessianExplorer.for_model(cnn, image, output_names=[str(k) for k in range(10)])
    explorer                                # display it
    explorer.figures["diagonal_image"]      # the go.Figure on screen
"""

from __future__ import annotations

import html
import time

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from hessviz.figures import hessian_spec, spectrum_spec
from hessviz.figures.images import diagonal_image_spec, eigenvalues_spec, pixel_row_spec
from hessviz.figures.model import diagonals_spec, node_terms_spec, with_names

from .compute import torch_threads
from .controls import set_text, text_of
from .display import WithStaticCopy, make_panel
from .errors import ErrorGuard
from .model_compute import ModelCompute, ModelProblem, ModelResults, describe, short_reason
from .panels import PanelText, caption_html

__all__ = ["ModelExplorer", "MODEL_PANELS", "MAX_POINT_SLIDERS"]

#: Vector inputs: sliders for at most this many coordinates (the first ones).
MAX_POINT_SLIDERS = 8
#: How far a point slider reaches on either side of the given value.
POINT_RADIUS = 2.0

#: Panel name → its texts. Which panels an explorer has depends on its input
#: (:attr:`ModelExplorer.panel_names`): vectors get ``hessian``, ``diagonal``, ``spectrum``,
#: ``terms``; images get ``diagonal_image``, ``pixel_row``, ``spectrum``.
MODEL_PANELS: dict[str, PanelText] = {
    "hessian": PanelText(
        "The Hessian of the chosen output",
        "How the output bends as two inputs change together. Beside it, the same matrix "
        "estimated from nearby model values (finite differences) and the gap; grey cells are "
        "rounding noise, not curvature.",
        "H_jk = ∂²y/∂x_j∂x_k, computed exactly by hessviz (hv.hessian); finite differences: "
        "[f(x+he_j+he_k) − f(x+he_j−he_k) − f(x−he_j+he_k) + f(x−he_j−he_k)] / 4h².",
    ),
    "diagonal": PanelText(
        "How every output bends along each input",
        "Row i, column j: how output i curves when only input j moves (the second-order "
        "Jacobian). A row's sum is that output's Laplacian.",
        "∂²y_i/∂x_j², the diagonal of each output's Hessian (hv.hessian_diagonal); "
        "Δy_i = Σ_j ∂²y_i/∂x_j² (hv.laplacian).",
    ),
    "spectrum": PanelText(
        "Curving up, down, or both: the verdict",
        "The eigenvalues say how much the output curves along its principal directions: all "
        "positive is a bowl, all negative a dome, mixed signs a saddle.",
        "H = V diag(λ) Vᵀ; near x, f(x+d) ≈ f(x) + gᵀd + ½ Σ_k λ_k (v_kᵀd)².",
    ),
    "terms": PanelText(
        "Where the curvature comes from: one term per node",
        "Every operation of the model that bends (an activation, a product of two "
        "input-dependent values, …) adds its own piece to the Hessian; the pieces add up to the "
        "whole. Each is named by where it sits in the model.",
        "H = Σ_nodes J_nᵀ (second derivative of node n, weighted by ∂y/∂node output) J_n "
        "(hv.layer_terms; a node's path is its module's name in the model).",
    ),
    "diagonal_image": PanelText(
        "How the chosen output bends along each pixel",
        "The diagonal of the Hessian has one value per pixel, so it is drawn as the image: red "
        "where the output curves up as that pixel alone brightens, blue where it curves down.",
        "∂²y/∂x_j² for every pixel j (hv.hessian_diagonal), reshaped like the input.",
    ),
    "pixel_row": PanelText(
        "How the chosen pixel interacts with every other pixel",
        "One row of the Hessian, drawn as the image: how the effect of the chosen pixel on the "
        "output changes when each other pixel changes. Pixels the model never combines with "
        "the chosen one through a curved operation stay white.",
        "∂²y/∂x_p∂x_j for the chosen pixel p and every pixel j: row p of "
        "hv.hessian(model, x, outputs=k, flat=True).",
    ),
}

CSS = """
<style>
.hv-static-copy { display: none; }
.hv-model { container-type: inline-size; width: 100%; }
.hv-model .hv-model-body { gap: 16px; align-items: flex-start; }
/* The panels scroll beside the controls, so a control and its effect share one screen (a
   notebook's output area clips position: sticky). */
.hv-model .hv-controls { flex: 0 0 270px; width: 270px; }
.hv-model .hv-main { flex: 1 1 0; min-width: 0; max-height: calc(100vh - 80px);
  overflow-y: auto; overflow-x: hidden; }
.hv-model .hv-main > * { flex-shrink: 0; }
.hv-model .hv-status { position: sticky; top: 0; z-index: 3; background: white;
  border-bottom: 1px solid #e3e3e3; }
.hv-model .hv-panels { display: grid; grid-template-columns: repeat(auto-fill,
  minmax(min(100%, 620px), 1fr)); gap: 6px 18px; width: 100%; }
.hv-model .hv-panel { min-width: 0; border-top: 1px solid #e3e3e3; }
.hv-model .hv-panel-title { margin: 8px 0 2px 0; font-size: 15px; }
.hv-model .hv-caption, .hv-model .hv-reading, .hv-model .hv-formula, .hv-model .hv-help,
.hv-model .hv-status { white-space: normal; line-height: 1.35; overflow-wrap: anywhere; }
/* ipywidgets sets the inner element's line height to the widget height: a direct rule wins. */
.hv-model .hv-status .widget-html-content, .hv-model .hv-caption .widget-html-content {
  line-height: 1.35; }
.hv-model .hv-reading { color: #14507a; }
.hv-model .hv-formula { color: #555; font-size: 12px; }
.hv-model .hv-formula summary { cursor: pointer; color: #14507a; }
.hv-model .hv-help { color: #666; font-size: 12px; }
.hv-model .widget-html, .hv-model .widget-html-content { height: auto; }
@container (max-width: 700px) {
  .hv-model .hv-model-body { flex-direction: column; }
  .hv-model .hv-controls { flex: 0 0 auto; width: 100%; }
}
</style>
"""

#: Control name → what it does (the tooltip).
TOOLTIPS = {
    "out": "Which output's Hessian the panels show (the elements of the flattened output).",
    "row": "Row of the pixel whose Hessian row is drawn (0 is the top).",
    "col": "Column of the pixel whose Hessian row is drawn (0 is the left).",
    "reset": "Put the point back where it was given.",
}


def model_name(model) -> str:
    """``"SmallCNN"`` for a module, a function's name (``"f"``, ``"<lambda>"``) otherwise."""
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__name__", type(model).__name__)


class ModelExplorer(WithStaticCopy):
    """Exact input Hessians of any model the engine handles, at one input, on one screen.

    Made by :meth:`HessianExplorer.for_model(model, x, input_names=…, output_names=…)
    <hessviz.widgets.HessianExplorer.for_model>`; never raises for a model that fails or that
    the engine refuses: the widget shows the message instead (:attr:`last_error`).

    Args:
        model: an ``nn.Module`` or a function of one tensor.
        x: one input as the model takes it: a vector ``(n,)`` or ``(1, d)``, or an image
            ``(…, H, W)`` such as ``(1, 28, 28)`` or ``(1, 1, 28, 28)``.
        input_names: ``n`` names (vector inputs), shown on the axes and the point sliders.
        output_names: one name per element of the flattened output, shown in the output menu.
        threads: torch intra-op threads while computing (``None``: torch's setting).

    Attributes:
        figures: panel name → the ``go.Figure`` on screen (see :attr:`figures`).
        controls: control name → widget: ``"out"`` (output menu), ``"x0"``, ``"x1"``, … (point
            sliders, vectors), ``"row"``, ``"col"`` (pixel, images), ``"reset"``.
        problem: the :class:`~hessviz.widgets.model_compute.ModelProblem` (``None`` if the model
            or input was refused).
        results: the :class:`~hessviz.widgets.model_compute.ModelResults` on screen, or ``None``.
        status: the status line (words: what is shown, which method ran and why).
        message: the error message area (empty when the last action succeeded).
    """

    def __init__(
        self, model, x, *, input_names=None, output_names=None, threads: int | None = None
    ) -> None:
        self.threads = threads
        self.problem: ModelProblem | None = None
        self.results: ModelResults | None = None
        self.updates = 0
        self.last_update_seconds: float | None = None
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.status.add_class("hv-status")
        self.message = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.message.add_class("hv-message")
        self._guard = ErrorGuard(self._show_message)
        self.controls: dict[str, widgets.Widget] = {}
        self.panels: dict = {}
        self._captions: dict[str, widgets.HTML] = {}
        self._compute: ModelCompute | None = None
        self._quiet = False
        self._guard.run(
            "reading the model and its input",
            self._describe,
            model,
            x,
            input_names,
            output_names,
            clear=False,
        )
        self.root = self._build_layout()
        if self.problem is not None:
            self._guard.run("computing the first view", self._refresh)

    # -- construction ----------------------------------------------------------------------------
    def _describe(self, model, x, input_names, output_names) -> None:
        with torch_threads(self.threads):
            self.problem = describe(model, x, input_names=input_names, output_names=output_names)
        self._compute = ModelCompute(self.problem)

    @property
    def panel_names(self) -> tuple[str, ...]:
        """The panels this model and input get (none if they were refused)."""
        if self.problem is None:
            return ()
        if self.problem.kind == "image":
            return ("diagonal_image", "pixel_row", "spectrum")
        return ("hessian", "diagonal", "spectrum", "terms")

    def _build_controls(self) -> widgets.VBox:
        p = self.problem
        style = {"description_width": "72px"}
        c = self.controls
        c["out"] = widgets.Dropdown(
            options=[(name, k) for k, name in enumerate(p.output_names)],
            value=0,
            description="output",
            style=style,
            layout=widgets.Layout(width="100%"),
        )
        rows = [c["out"]]
        if p.kind == "image":
            height, width = p.image_shape
            c["row"] = widgets.IntSlider(
                value=height // 2,
                min=0,
                max=height - 1,
                description="pixel row",
                style=style,
                continuous_update=False,
                layout=widgets.Layout(width="100%"),
            )
            c["col"] = widgets.IntSlider(
                value=width // 2,
                min=0,
                max=width - 1,
                description="pixel col",
                style=style,
                continuous_update=False,
                layout=widgets.Layout(width="100%"),
            )
            rows += [c["row"], c["col"]]
            help_text = "Pick the output, and the pixel whose Hessian row is drawn."
        else:
            flat = p.x.reshape(-1).tolist()
            for j in range(min(p.n, MAX_POINT_SLIDERS)):
                name = f"x{j}"
                c[name] = widgets.FloatSlider(
                    value=flat[j],
                    min=flat[j] - POINT_RADIUS,
                    max=flat[j] + POINT_RADIUS,
                    step=0.01,
                    readout_format=".2f",
                    description=p.input_names[j],
                    style=style,
                    continuous_update=False,
                    layout=widgets.Layout(width="100%"),
                )
                c[name].tooltip = (
                    f"Input {p.input_names[j]} of the point where the derivatives are taken "
                    f"(given: {flat[j]:.3g})."
                )
                rows.append(c[name])
            c["reset"] = widgets.Button(
                description="Back to the given point", layout=widgets.Layout(width="auto")
            )
            c["reset"].on_click(lambda _button: self.reset_point())
            rows.append(c["reset"])
            more = (
                f" Sliders move the first {MAX_POINT_SLIDERS} of {p.n} inputs."
                if p.n > MAX_POINT_SLIDERS
                else ""
            )
            help_text = (
                "Pick the output, and move the point where the derivatives are taken." + more
            )
        for name, widget in c.items():
            widget.add_class(f"hv-{name}")
            if name in TOOLTIPS:
                widget.tooltip = TOOLTIPS[name]
            if name != "reset":
                widget.observe(self._control_changed, names="value")
        header = widgets.HTML(
            "<div class='hv-section-title'><b>Controls</b></div>"
            f"<div class='hv-help'>{html.escape(help_text)} Hover over a control for what it "
            "does.</div>"
        )
        column = widgets.VBox([header, *rows])
        column.add_class("hv-controls")
        return column

    def _build_layout(self) -> widgets.Widget:
        intro = widgets.HTML(
            CSS + "<h3 style='margin:2px 0'>Your model's input Hessian</h3>"
            "<div class='hv-help'>Exact second derivatives of the model's outputs with respect "
            "to its input, at the given point, computed by hessviz; the status line says which "
            "method ran and why.</div>",
            layout=widgets.Layout(width="100%"),
        )
        sections = []
        for name in self.panel_names:
            text = MODEL_PANELS[name]
            self.panels[name] = make_panel(name)
            caption = widgets.HTML(caption_html(text), layout=widgets.Layout(width="100%"))
            caption.add_class(f"hv-caption-{name}")
            self._captions[name] = caption
            title = widgets.HTML(f"<h4 class='hv-panel-title'>{html.escape(text.title)}</h4>")
            section = widgets.VBox(
                [title, caption, self.panels[name].box],
                layout=widgets.Layout(min_width="0", width="100%"),
            )
            section.add_class("hv-panel")
            section.add_class(f"hv-panel-{name}")
            sections.append(section)
        grid = widgets.Box(sections)
        grid.add_class("hv-panels")
        main = widgets.VBox([self.status, self.message, grid])
        main.add_class("hv-main")
        children = [main] if self.problem is None else [self._build_controls(), main]
        body = widgets.HBox(children, layout=widgets.Layout(width="100%"))
        body.add_class("hv-model-body")
        root = widgets.VBox([intro, body], layout=widgets.Layout(width="100%"))
        root.add_class("hv-model")
        return root

    # -- public ----------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.Widget:
        """The root widget to display."""
        return self.root

    @property
    def figures(self) -> dict[str, go.Figure]:
        """Panel name → the ``go.Figure`` on screen (read ``.data[0].z``, ``.layout``…).

        Vector inputs: ``"hessian"`` (traces ``exact``, ``FD``, ``|exact − FD|``; FD only for
        ≤ 32 inputs), ``"diagonal"`` (trace ``diagonal``: every output's ``∂²y_i/∂x_j²``, the
        Laplacians in the title), ``"spectrum"`` (``eigenvalues`` bars, ``eigenvectors``),
        ``"terms"`` (one heatmap per curvature node, named by its module path, then
        ``Σ terms`` and ``H``). Images: ``"diagonal_image"`` (trace ``diagonal``: the chosen
        output's diagonal as the image), ``"pixel_row"`` (trace ``pixel row``: the chosen
        pixel's Hessian row as the image; trace ``chosen pixel``), ``"spectrum"`` (scatter
        ``eigenvalues``, all of them, ascending). Empty when the model was refused.
        """
        return {name: panel.figure for name, panel in self.panels.items()}

    @property
    def captions(self) -> dict[str, str]:
        """Panel name → its caption as plain text."""
        return {name: text_of(caption) for name, caption in self._captions.items()}

    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        return text_of(self.status)

    @property
    def last_error(self) -> str | None:
        """The message of the last failed action, or ``None`` after a success."""
        return self._guard.last_error

    @property
    def output(self) -> int:
        """The chosen output (index into the flattened output)."""
        return self.controls["out"].value if "out" in self.controls else 0

    @property
    def pixel(self) -> tuple[int, int] | None:
        """The chosen pixel ``(row, column)`` (images), else ``None``."""
        if "row" not in self.controls:
            return None
        return (self.controls["row"].value, self.controls["col"].value)

    @property
    def point(self) -> tuple[float, ...] | None:
        """The slider values of a vector input (``None`` for images)."""
        sliders = [w for name, w in self.controls.items() if name[:1] == "x" and name[1:].isdigit()]
        return tuple(float(w.value) for w in sliders) if sliders else None

    def set_output(self, output: int) -> bool:
        """Show output ``output`` (its index in the flattened output). Returns success."""
        return self._set({"out": output})

    def set_pixel(self, row: int, col: int) -> bool:
        """Show pixel ``(row, col)``'s Hessian row (images). Returns success."""
        return self._set({"row": row, "col": col})

    def set_point(self, *values: float) -> bool:
        """Move the first coordinates of a vector input to ``values``. Returns success."""
        return self._set({f"x{j}": float(v) for j, v in enumerate(values)})

    def reset_point(self) -> bool:
        """Put the point back where it was given."""
        if self.problem is None:
            return False
        flat = self.problem.x.reshape(-1).tolist()
        return self._set({name: flat[int(name[1:])] for name in self.controls if name[:1] == "x"})

    def _set(self, values: dict) -> bool:
        def apply() -> None:
            unknown = [name for name in values if name not in self.controls]
            if unknown:
                raise ValueError(f"this explorer has no control {', '.join(unknown)}")
            self._quiet = True
            try:
                for name, value in values.items():
                    self.controls[name].value = value
            finally:
                self._quiet = False
            self._refresh()

        return self._guard.run("applying the change", apply)

    def _static_parts(self):
        text = self.status_text or self.last_error or ""
        return text, {MODEL_PANELS[name].title: figure for name, figure in self.figures.items()}

    # -- updates ---------------------------------------------------------------------------------
    def _control_changed(self, _change) -> None:
        if not self._quiet:
            self._guard.run("applying the change", self._refresh)

    def _refresh(self) -> None:
        start = time.perf_counter()
        with torch_threads(self.threads):
            r = self._compute.run(self.output, self.point, self.pixel or (0, 0))
        self._render(r)
        self.results = r
        self.updates += 1
        self.last_update_seconds = time.perf_counter() - start
        set_text(self.status, self._status_text(r, self.last_update_seconds))

    def _caption(self, name: str, extra: str) -> None:
        value = caption_html(MODEL_PANELS[name], extra)
        if self._captions[name].value != value:
            self._captions[name].value = value

    def _render(self, r: ModelResults) -> None:
        p = self.problem
        k = r.output
        name = p.output_names[k]
        if p.kind == "image":
            self.panels["diagonal_image"].show(
                diagonal_image_spec(r.diagonals[k].reshape(p.image_shape), output=name)
            )
            self.panels["pixel_row"].show(pixel_row_spec(r.pixel_row, pixel=r.pixel, output=name))
            self.panels["spectrum"].show(
                eigenvalues_spec(
                    r.eigenvalues,
                    verdict=r.verdict.kind,
                    description=r.verdict.description,
                    output=name,
                )
            )
            self._caption("spectrum", f"Verdict for {name}: {r.verdict.description}.")
            self._caption(
                "diagonal_image",
                f"Laplacian of {name} (the sum of this image): {r.laplacians[k]:.6g}.",
            )
            return
        names = dict(inputs=p.input_names, output=(k, name))
        if r.fd_hessian is not None:
            hessian = hessian_spec(
                r.hessian, r.fd_hessian, output=k, step=r.step, noise_floor=r.noise_floor
            )
            gap = float(abs(r.hessian - r.fd_hessian).max())
            self._caption(
                "hessian",
                f"Finite differences at h = {r.step:.1e} are off by at most {gap:.1e} "
                f"(rounding noise floor {r.noise_floor:.1e}).",
            )
        else:
            hessian = hessian_spec(r.hessian, r.hessian, output=k)
            self._caption("hessian", "Finite differences are skipped: too many inputs.")
        self.panels["hessian"].show(with_names(hessian, **names))
        self.panels["diagonal"].show(
            diagonals_spec(
                r.diagonals,
                inputs=p.input_names,
                outputs=p.output_names,
                laplacians=r.laplacians,
            )
        )
        if p.scalar:
            self._caption("diagonal", f"Laplacian Δ{name} = {r.laplacians[0]:.6g}.")
        self.panels["spectrum"].show(
            with_names(
                spectrum_spec(
                    r.eigenvalues,
                    r.eigenvectors,
                    verdict=r.verdict.kind,
                    description=r.verdict.description,
                    output=k,
                ),
                **names,
            )
        )
        self._caption("spectrum", f"Verdict for {name}: {r.verdict.description}.")
        self.panels["terms"].show(
            node_terms_spec(r.terms, r.hessian, output=k, output_name=name, inputs=p.input_names)
        )
        self._caption(
            "terms",
            r.terms_note
            or ("No node of this model bends: its Hessian is zero." if not r.terms else ""),
        )

    def _status_text(self, r: ModelResults, seconds: float) -> str:
        p = self.problem
        e = r.explanation
        what = (
            f"an image of {p.image_shape[0]}×{p.image_shape[1]} pixels"
            if p.kind == "image"
            else f"{p.n} input{'s' if p.n != 1 else ''}"
        )
        where = f", pixel ({r.pixel[0]}, {r.pixel[1]})" if r.pixel is not None else ""
        return (
            f"{model_name(p.model)} with {what} and {p.m} output{'s' if p.m != 1 else ''}; "
            f"output {p.output_names[r.output]}{where}: {r.verdict.description}. "
            f"Exact Hessian by method {e.method!r}: {short_reason(e)} "
            f"Updated in {1e3 * seconds:.0f} ms."
        )

    def _show_message(self, text: str | None) -> None:
        set_text(self.message, text or "", style="color:#b00020")
