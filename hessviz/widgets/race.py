"""The method race: time every registered method on the explorer's current model and point."""

from __future__ import annotations

import functools
from collections.abc import Callable

import ipywidgets as widgets
import torch

import hessviz as hv
from hessviz.analysis import median_seconds
from hessviz.figures import RaceEntry, race_spec

from .figure_widget import PlotPanel

#: Seconds of repeated calls per method in the race (at least 3 calls, at most 50).
RACE_SECONDS_PER_METHOD = 0.15


def race_plan() -> list[RaceEntry]:
    """One untimed entry per registered method and operation (full Hessian, then diagonal)."""
    plan = [
        RaceEntry(name, "hessian", None)
        for name, m in hv.METHODS.items()
        if "hessian" in m.computes
    ]
    plan += [
        RaceEntry(name, "diagonal", None)
        for name, m in hv.METHODS.items()
        if "diagonal" in m.computes
    ]
    return plan


class Race:
    """The race's progress bar and status, drawing into a panel.

    Args:
        panel: where the bars go.
        button: the race button (disabled while the race runs).

    Attributes:
        progress: an ``IntProgress`` (class ``hv-race-progress``).
        status: a ``Label`` (class ``hv-race-status``).
        row: the button, progress and status in one wrapping row.
        key: what the panel's timings belong to (``None``: not timed).
    """

    def __init__(self, panel: PlotPanel, button: widgets.Button) -> None:
        self.panel = panel
        self.button = button
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, description="progress", layout=widgets.Layout(width="220px")
        )
        self.progress.add_class("hv-race-progress")
        self.status = widgets.Label(value="")
        self.status.add_class("hv-race-status")
        self.row = widgets.HBox(
            [button, self.progress, self.status],
            layout=widgets.Layout(flex_flow="row wrap", align_items="center", width="100%"),
        )
        self.key: object = None

    def reset(self, key: object, subtitle: str) -> None:
        """Show the untimed plan for the view ``key``."""
        self.key = key
        self.progress.value = 0
        self.status.value = "Press the button to time every method on this network."
        self.panel.show(race_spec(race_plan(), subtitle=subtitle), key=key)

    def run(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        *,
        key: object,
        subtitle: str,
        budget: float = RACE_SECONDS_PER_METHOD,
        each: Callable[[], None] | None = None,
    ) -> list[RaceEntry]:
        """Time every method on ``model`` at ``x``, redrawing the panel after each one.

        Returns:
            The entries (``seconds=None`` where a method failed; its note says why).
        """
        entries = race_plan()
        self.button.disabled = True
        try:
            self.progress.max = len(entries)
            self.progress.value = 0
            calls = {"hessian": hv.hessian, "diagonal": hv.hessian_diagonal}
            for i, entry in enumerate(entries):
                self.status.value = (
                    f"timing {entry.method} ({entry.operation}), {i + 1} of {len(entries)}"
                )
                call = functools.partial(calls[entry.operation], model, x, method=entry.method)
                try:
                    seconds = median_seconds(call, budget)
                    entries[i] = RaceEntry(entry.method, entry.operation, seconds)
                except hv.HessvizError as error:
                    entries[i] = RaceEntry(
                        entry.method, entry.operation, None, f"n/a: {error}"[:80]
                    )
                self.progress.value = i + 1
                self.panel.show(race_spec(entries, subtitle=subtitle), key=("race", i))
            done = [e for e in entries if e.seconds is not None]
            if done:
                best = min(done, key=lambda e: e.seconds)
                self.status.value = (
                    f"done: fastest is {best.method} ({best.operation}, "
                    f"{1e3 * best.seconds:.3g} ms)"
                )
            self.key = key
        finally:
            self.button.disabled = False
        return entries
