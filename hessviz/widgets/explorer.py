"""``HessianExplorer``: controls in a sidebar, seven panels beside them, a status line in words.

The explorer owns an :class:`~hessviz.widgets.state.ExplorerState`, its
:class:`~hessviz.widgets.controls.Controls`, :class:`~hessviz.widgets.panels.Panels` and
:class:`~hessviz.widgets.race.Race`. A control change becomes a new state; the
:class:`~hessviz.widgets.compute.Pipeline` recomputes only the stages whose inputs changed; the
panels whose inputs changed are redrawn in place. All maths comes from ``hessviz`` and
:mod:`hessviz.analysis`; this module only wires and lays out.

Layout: the controls stay in view in a sidebar of their own (it scrolls by itself) while the
panels scroll beside it, one column or, on wide screens, two. Where the explorer is narrower than
:data:`NARROW_PX` the controls move above the panels, in a band of their own that scrolls.

Usage (a notebook or a Voila dashboard)::

    from hessviz.widgets import HessianExplorer
    app = HessianExplorer.from_query(os.environ.get("QUERY_STRING", ""))
    display(app.widget)
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

import ipywidgets as widgets
import torch
from ipywidgets.widgets.widget_string import HTMLStyle

import hessviz as hv
from hessviz.analysis import scientific

from .compute import DEFAULT_THREADS, Pipeline, ViewResults, torch_threads
from .controls import CSS_CLASSES, Controls, set_text, text_of
from .display import WithStaticCopy
from .errors import ErrorGuard
from .lessons import LESSONS
from .panels import PANELS, Panels
from .race import RACE_SECONDS_PER_METHOD, Race, race_plan
from .state import ExplorerState

if TYPE_CHECKING:
    from .model_explorer import ModelExplorer

__all__ = ["HessianExplorer", "PANELS", "RACE_SECONDS_PER_METHOD", "text_of"]

#: Below this width (of the explorer, not the window) the controls go above the panels.
NARROW_PX = 900
#: Width of the sidebar.
SIDEBAR_PX = 310

#: The explorer's style sheet. Container queries follow the explorer's own width, so the layout
#: reflows the same in a narrow notebook output as in a narrow window.
CSS = f"""
<style>
.hv-app {{ container-type: inline-size; width: 100%; height: calc(100vh - 32px);
  min-height: 640px; overflow: hidden; }}
.hv-app > .hv-header {{ flex: 0 0 auto; }}
.hv-app .hv-body {{ flex: 1 1 0; min-height: 0; gap: 14px; overflow: hidden; }}
.hv-app .hv-controls {{ flex: 0 0 {SIDEBAR_PX}px; width: {SIDEBAR_PX}px; height: 100%;
  overflow-y: auto; overflow-x: hidden; padding-right: 6px; box-sizing: border-box;
  border-right: 1px solid #e3e3e3; }}
.hv-app .hv-main {{ flex: 1 1 0; min-width: 0; height: 100%; overflow-y: auto;
  overflow-x: hidden; }}
.hv-app .hv-controls > *, .hv-app .hv-controls .widget-box > *, .hv-app .hv-main > * {{
  flex-shrink: 0; }}
.hv-app .hv-controls .widget-box {{ overflow: visible; }}
.hv-app .hv-status {{ position: sticky; top: 0; z-index: 3; background: white;
  border-bottom: 1px solid #e3e3e3; padding-bottom: 3px; }}
.hv-app .hv-panels {{ display: grid; grid-template-columns: repeat(auto-fill,
  minmax(min(100%, 640px), 1fr)); gap: 6px 18px; width: 100%; overflow: visible; }}
.hv-app .hv-panel {{ min-width: 0; overflow: visible; border-top: 1px solid #e3e3e3;
  scroll-margin-top: 64px; }}
.hv-app .hv-panel-title {{ margin: 8px 0 2px 0; font-size: 15px; }}
.hv-app .hv-caption, .hv-app .hv-reading, .hv-app .hv-formula, .hv-app .hv-help,
.hv-app .hv-intro, .hv-app .hv-lesson-text {{ white-space: normal; line-height: 1.35;
  overflow-wrap: anywhere; }}
.hv-app .hv-caption {{ color: #333; }}
.hv-app .hv-reading {{ color: #14507a; margin-top: 2px; }}
.hv-app .hv-formula {{ color: #555; font-size: 12px; margin: 2px 0; }}
.hv-app .hv-formula summary {{ cursor: pointer; color: #14507a; }}
.hv-app .hv-section {{ margin-bottom: 8px; }}
.hv-app .hv-section-title {{ font-weight: bold; margin-top: 6px; }}
.hv-app .hv-help {{ color: #666; font-size: 12px; }}
.hv-app .widget-html, .hv-app .widget-html-content {{ height: auto; }}
.hv-app .widget-html-content {{ line-height: 1.35; }}
.hv-app .widget-label {{ white-space: normal; }}
.hv-app .hv-controls .widget-label {{ white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.hv-app .hv-header {{ width: 100%; }}
.hv-app .hv-lesson-text {{ background: #f3f7fb; border-left: 3px solid #14507a;
  padding: 4px 8px; margin: 4px 0; }}
.hv-app .hv-view .widget-toggle-button {{ width: 88px; }}
@container (max-width: {NARROW_PX}px) {{
  .hv-app .hv-body {{ flex-direction: column; }}
  .hv-app .hv-controls {{ flex: 0 0 auto; width: 100%; height: auto; max-height: 40%;
    border-right: none; border-bottom: 1px solid #d0d0d0; display: grid;
    grid-template-columns: repeat(auto-fill, minmax(min(100%, 330px), 1fr)); gap: 0 16px; }}
  .hv-app .hv-main {{ flex: 1 1 0; height: auto; min-height: 0; }}
  .hv-app .hv-controls > *, .hv-app .hv-controls .widget-box > *, .hv-app .hv-main > * {{
  flex-shrink: 0; }}
.hv-app .hv-controls .widget-box {{ overflow: visible; }}
.hv-app .hv-status {{ position: sticky; top: 0; z-index: 3; background: white;
  border-bottom: 1px solid #e3e3e3; padding-bottom: 3px; }}
.hv-app .hv-panels {{ grid-template-columns: minmax(0, 1fr); }}
  .hv-app .hv-intro-more {{ display: none; }}
}}
/* The static copy of the figures that follows a displayed explorer, for HTML exports. */
.hv-static-copy {{ display: none; }}
</style>
"""

INTRO = (
    "<h2 style='margin:2px 0'>hessviz explorer: how a neural network curves</h2>"
    "<div class='hv-intro'>The Hessian of a network is the table of its second derivatives: how "
    "each output bends when two inputs move together. Change the network or the point with the "
    "controls and watch the exact Hessian, its estimates and what they mean change in the panels."
    "<span class='hv-intro-more'> New here? Pick a lesson.</span></div>"
)


def widgets_in(*roots: widgets.Widget) -> list[widgets.Widget]:
    """Every widget the ``roots`` refer to, themselves included (children, layouts, styles…),
    once each."""
    found: dict[int, widgets.Widget] = {}
    stack = list(roots)
    while stack:
        widget = stack.pop()
        if id(widget) in found:
            continue
        found[id(widget)] = widget
        for key in widget.keys:
            value = getattr(widget, key)
            values = value if isinstance(value, list | tuple) else (value,)
            stack.extend(v for v in values if isinstance(v, widgets.Widget))
    return list(found.values())


class HessianExplorer(WithStaticCopy):
    """The interactive explorer of input Hessians of small MLPs.

    Args:
        state: the initial view (repaired if invalid; see :meth:`ExplorerState.normalized`).
        notes: plain-text notes to show at the start (e.g. from parsing a query string).
        base_url: prefix of :meth:`link` (e.g. the dashboard's URL).
        threads: torch intra-op threads while the explorer computes (default 1, see
            :data:`hessviz.widgets.compute.DEFAULT_THREADS`); ``None`` keeps torch's setting.

    Attributes:
        controls: control name → widget (``"act"``, ``"x0"``, ``"layers"``, ``"lesson"``, …);
            each has the CSS class ``hv-<name>`` listed in :data:`CSS_CLASSES` and a tooltip.
        panels: panel name → :class:`~hessviz.widgets.figure_widget.PlotPanel`.
        results: the :class:`~hessviz.widgets.compute.ViewResults` on display (``None`` before the
            first successful update).
        last_update_seconds: wall time of the last update (compute + redraw).
        updates: number of successful updates.

    Example:
        >>> app = HessianExplorer.from_query("lesson=relu-is-flat")
        >>> float(abs(app.results.hessians).max()), app.state.act, app.state.lesson
        (0.0, 'relu', 'relu-is-flat')
    """

    #: Control name → CSS class (a browser test selects widgets by these).
    CSS_CLASSES = CSS_CLASSES

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
        self._build_status()
        self._guard = ErrorGuard(self._show_message)
        initial = state if isinstance(state, ExplorerState) else ExplorerState()
        self._state, repairs = initial.normalized()
        if state is not None and not isinstance(state, ExplorerState):
            repairs.insert(0, "ignored a state that is not an ExplorerState; showing the default")
        self._controls = Controls(self._control_changed, self._link_edited, self.run_race)
        self.controls = self._controls.widgets
        self._panels = Panels()
        self.panels = self._panels.plots
        self._race = Race(self.panels["race"], self.controls["race"])
        self._panels.sections["race"].children = (
            *self._panels.sections["race"].children[:-1],
            self._race.row,
            self.panels["race"].box,
        )
        self.race_progress = self._race.progress
        self.race_status = self._race.status
        self.root = self._build_layout()
        self._set_notes([*notes, *repairs])
        self._push_controls()
        self._guard.run("drawing the first view", self._refresh)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_query(cls, query: str | None, **kwargs) -> HessianExplorer:
        """An explorer showing the view a URL query string describes (never raises on bad input).

        Invalid or hostile values fall back to defaults; the notes say which, in plain text.
        ``lesson=<name>`` opens a lesson (see :data:`~hessviz.widgets.lessons.LESSONS`).
        """
        state, notes = ExplorerState.from_query(query)
        return cls(state, notes=notes, **kwargs)

    @classmethod
    def warm_up(cls) -> None:
        """Pay a kernel's one-time costs of a first explorer now, before anyone waits for it.

        Builds an explorer of the default view and closes its widgets again: the engine's lazy
        imports, torch's and plotly's first calls and the widgets' first instances made a fresh
        kernel's first view take 0.6–0.8 s instead of 0.2–0.3 s (a busy 2-core machine). The
        dashboard runs it in a pre-heated kernel, before the visitor arrives
        (``hessviz.serve.wait_for_visitor(prepare=HessianExplorer.warm_up)``).
        """
        app = cls()
        # The kernel's one plotly.js widget stays, for the explorers to come.
        shared = {id(w) for w in widgets_in(app.panels["hessian"].plot._plotly)}
        for widget in widgets_in(*app._parts()):
            if id(widget) not in shared:
                widget.close()

    @classmethod
    def for_model(cls, model, x, *, input_names=None, output_names=None) -> ModelExplorer:
        """An explorer of any model the engine handles, at one input (notebooks, JupyterLab).

        Args:
            model: an ``nn.Module`` (custom ``forward`` included) or a function of one tensor.
            x: one input as the model takes it: a vector ``(n,)`` / ``(1, d)``, or an image
                ``(…, H, W)`` such as ``(1, 28, 28)`` or ``(1, 1, 28, 28)``.
            input_names: ``n`` names for a vector's inputs (axes and point sliders).
            output_names: one name per element of the flattened output (the output menu).

        Returns:
            A :class:`~hessviz.widgets.model_explorer.ModelExplorer`: display it; its
            ``figures`` maps panel names to the figures on screen. A model that fails or that
            the engine refuses gives a message in the widget, never an exception.
        """
        from .model_explorer import ModelExplorer

        return ModelExplorer(model, x, input_names=input_names, output_names=output_names)

    def _build_status(self) -> None:
        # HTML widgets so that long lines wrap; every value is escaped (see set_text). They share
        # one layout and one style (each Layout and Style is a widget model the page builds).
        self._wide = wide = widgets.Layout(width="100%")
        self._html_style = style = HTMLStyle()
        self.status = widgets.HTML(value="", layout=wide, style=style)
        self.status.add_class("hv-status")
        self.message = widgets.HTML(value="", layout=wide, style=style)
        self.message.add_class("hv-message")
        self.notes = widgets.VBox([], layout=wide)
        self.notes.add_class("hv-notes")
        self._note_labels: list[widgets.Label] = []
        self.lesson_text = widgets.HTML(value="", layout=wide, style=style)
        self.lesson_text.add_class("hv-lesson-box")

    def _lesson_links(self) -> str:
        links = " · ".join(
            f"<a href='{html.escape(self.base_url)}?lesson={key}' target='_top'>"
            f"{html.escape(lesson.title)}</a>"
            for key, lesson in LESSONS.items()
        )
        return f"<div class='hv-help hv-intro-more'>Lessons as links: {links}</div>"

    def _build_layout(self) -> widgets.Widget:
        wide, style = self._wide, self._html_style
        header = widgets.VBox(
            [
                widgets.HTML(CSS + INTRO, layout=wide, style=style),
                widgets.HBox(
                    [self.controls["lesson"]],
                    layout=widgets.Layout(width="100%", max_width="620px"),
                ),
                widgets.HTML(self._lesson_links(), layout=wide, style=style),
                self.lesson_text,
            ],
            layout=wide,
        )
        header.add_class("hv-header")
        # A page builds the first panel first and the others once it has drawn the first plot:
        # ~30 widget views fewer to build before the first heatmap (~0.2 s here).
        self._grid = grid = widgets.Box([self._panels.sections["hessian"]])
        grid.add_class("hv-panels")
        self.panels["hessian"].on_drawn(self._show_every_panel)
        main = widgets.VBox([self.status, self.message, self.notes, grid])
        main.add_class("hv-main")
        body = widgets.HBox([self._controls.column, main], layout=wide)
        body.add_class("hv-body")
        root = widgets.VBox([header, body], layout=wide)
        root.add_class("hv-app")
        return root

    def _show_every_panel(self) -> None:
        every = tuple(self._panels.sections.values())
        if self._grid.children != every:
            self._grid.children = every

    def _parts(self) -> list[widgets.Widget]:
        """The explorer's widgets, through what they refer to: the page, and what is not on it
        now (hidden controls, panels not yet shown, spare note labels)."""
        return [
            self.root,
            *self._panels.sections.values(),
            *self.controls.values(),
            *self._note_labels,
        ]

    # -- public ----------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.Widget:
        """The root widget to ``display`` (each plot's state is its figure: nothing to sync).

        It shows the first panel at once and the other panels as soon as a page has drawn the
        first plot (:meth:`~hessviz.widgets.figure_widget.PlotWidget.on_drawn`): the dashboard's
        first view. Without a page (a notebook executed headless) that never happens; display
        the explorer itself (``display(app)``) there, which shows every panel at once."""
        return self.root

    def _before_display(self) -> None:
        """Displayed as itself, the explorer shows every panel at once instead of waiting for a
        page to draw its first plot (what :attr:`widget` does, for the dashboard's first view):
        the widget state a notebook saves holds every panel, and so does its executed HTML
        export."""
        self._show_every_panel()

    def _static_parts(self):
        text = self.last_error or text_of(self.status)
        return text, {PANELS[name].title: panel.figure for name, panel in self.panels.items()}

    @property
    def state(self) -> ExplorerState:
        """The current (valid) state."""
        return self._state

    @property
    def figures(self) -> dict[str, widgets.Widget]:
        """Panel name → the figure it shows (read ``.data[0].z``, ``.layout``…)."""
        return {name: panel.figure for name, panel in self.panels.items()}

    @property
    def captions(self) -> dict[str, str]:
        """Panel name → its caption as plain text (words, the reading of the numbers, formula)."""
        return {name: self._panels.caption_text(name) for name in self._panels.captions}

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

    def open_lesson(self, name: str) -> bool:
        """Show lesson ``name``'s preset view and what to look at (``""``: leave the lesson)."""
        if not name:
            return self.set_state(lesson="")
        if name not in LESSONS:
            return self.set_state(lesson=name)  # refused with a note
        return self.set_state(ExplorerState.for_lesson(name))

    def apply_query(self, query: str) -> bool:
        """Show the view of a query string or link (invalid values fall back with notes)."""
        query = query.split("?", 1)[1] if "?" in query else query
        state, notes = ExplorerState.from_query(query)
        return self._guard.run("applying the query", self._apply, state, {}, notes_from=notes)

    def _link_edited(self, text: str) -> None:
        """A link pasted into the share box (and Enter) shows that view."""
        if text != self.link():
            self.apply_query(text)

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

    def _control_changed(self, name: str, value) -> None:
        if name == "lesson":
            self.open_lesson(value)
            return
        self._guard.run(f"applying the change of {name}", self._apply_control, name, value)

    def _apply_control(self, name: str, value) -> None:
        changes = self._controls.changes(name, value, self._state)
        if changes is not None:
            self._apply(None, changes)

    def _push_controls(self) -> None:
        """Make every control show the state (and hide what does not apply)."""
        s = self._state
        step = s.step if s.step is not None else Pipeline.default_step(s, s.dtype)
        self._controls.show(s, link=self.link(), step=step)
        lesson = LESSONS.get(s.lesson)
        value = (
            ""
            if lesson is None
            else (
                f"<div class='hv-lesson-text'><b>Lesson: {html.escape(lesson.title)}.</b> "
                f"{html.escape(lesson.look)}</div>"
            )
        )
        if self.lesson_text.value != value:
            self.lesson_text.value = value

    # -- updates ---------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Recompute what changed and redraw what changed; the status line says what happened."""
        start = time.perf_counter()
        results = self._pipeline.run(self._state)
        self._panels.render(results)
        self.results = results
        self.last_update_seconds = time.perf_counter() - start
        self.updates += 1
        set_text(self.status, self._status_text(results, self.last_update_seconds))
        if self._race.key != self._race_identity():
            self._race.reset(self._race_identity(), self._race_subtitle())

    def _status_text(self, r: ViewResults, seconds: float) -> str:
        """What is on screen, in words."""
        s = r.state
        point = ", ".join(f"{v:g}" for v in s.x)
        how = f"auto → {r.method}" if s.method == "auto" else r.method
        noisy = bool((abs(r.fd_hessian) <= r.noise_floor).all())
        if noisy:
            fd = (
                f"Finite differences (h = {scientific(r.step)}) show only rounding noise, below "
                f"{scientific(r.noise_floor)}."
            )
        else:
            fd = (
                f"Finite differences (h = {scientific(r.step)}) agree with it to "
                f"{scientific(r.max_fd_error)}."
            )
        return (
            f"{s.act} network {'×'.join(map(str, s.sizes))} in {s.dtype}, output y{s.out} at "
            f"x = ({point}): {r.verdict.description}. {fd} "
            f"Exact Hessian by method {how}; updated in {1e3 * seconds:.0f} ms."
        )

    def _show_message(self, text: str | None) -> None:
        set_text(self.message, text or "", style="color:#b00020")

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

    def run_race(self, seconds_per_method: float = RACE_SECONDS_PER_METHOD) -> list:
        """Time every registered method on the current model and point, updating the panel live.

        Args:
            seconds_per_method: time budget of the repeated calls of each method.

        Returns:
            The timed entries (``seconds=None`` where a method failed; the note says why).
        """
        entries: list = race_plan()

        def race() -> None:
            entries[:] = self._race.run(
                self.model,
                self.x,
                key=self._race_identity(),
                subtitle=self._race_subtitle(),
                budget=seconds_per_method,
            )

        with torch_threads(self._pipeline.threads):
            self._guard.run("running the method race", race)
        return entries
