"""Lessons: presets that set up one phenomenon each and say what to look at.

Each lesson is a deep link: ``?lesson=relu-is-flat`` opens the explorer on it (other keys in the
same query override the preset). The texts are plain sentences (shown escaped).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lesson:
    """One preset view.

    Attributes:
        title: the lesson's name in the chooser.
        changes: the :class:`~hessviz.widgets.state.ExplorerState` fields it sets (the rest are
            defaults).
        look: what to look at, and what to try next (plain text).
        panel: the panel the lesson is about (its name in :data:`~hessviz.widgets.panels.PANELS`).
    """

    title: str
    changes: dict = field(default_factory=dict)
    look: str = ""
    panel: str = "hessian"


#: Lesson key (the ``lesson=`` value) → lesson, in the order the chooser lists them.
LESSONS: dict[str, Lesson] = {
    "saddle-point": Lesson(
        "A saddle point",
        dict(act="tanh", m=1, layers=(8, 8), seed=1, x=(0.3, -1.0), view="curvature"),
        "The verdict panel says saddle: one eigenvalue is negative, one positive. In the "
        "landscape (curved part: the function minus its value and slope) the contours are "
        "hyperbolas: the output curves up along the red line and down along the blue one. "
        "Move x0 and watch the verdict change.",
        panel="spectrum",
    ),
    "relu-is-flat": Lesson(
        "ReLU networks are flat",
        dict(act="relu", layers=(8, 8)),
        "The exact Hessian is exactly 0: a ReLU network is linear between its kinks, so it has "
        "no curvature. Finite differences still return tiny numbers (about 1e-10): rounding "
        "noise, shown as grey noise cells. Every layer term is 0 too. Switch the activation to "
        "softplus, a smooth ReLU, and curvature appears.",
        panel="hessian",
    ),
    "rounding-vs-truncation": Lesson(
        "Rounding vs truncation in finite differences",
        dict(act="softplus", layers=(8, 8), step=1e-6),
        "The step h = 1e-6 is left of the dip of the error curve: round-off dominates and the "
        "finite-difference Hessian is off by about 1e-5. Drag the FD step to 1e-4, the bottom "
        "of the dip (off by about 1e-9), then to 0.1: now truncation dominates and the error "
        "grows again. The caption under the curves says which regime your step is in.",
        panel="fdstep",
    ),
    "float32-vs-float64": Lesson(
        "float32 vs float64",
        dict(act="tanh", layers=(8, 8), dtype="float32"),
        "In float32 numbers carry about 7 digits, float64 about 16. In the error curves, "
        "float32 (blue) bottoms out around 1e-5 at a large step, float64 (orange) around 1e-9 "
        "at a small one; the caption gives the exact numbers. Switch precision to float64 and "
        "watch the gap in the first panel drop by several orders of magnitude.",
        panel="fdstep",
    ),
    "hutchinson-is-noisy": Lesson(
        "Why Hutchinson is noisy",
        dict(act="tanh", n=4, layers=(16, 16), x=(0.3, -1.0, 0.5, 0.0), samples=4),
        "With 4 random probes Hutchinson's estimate of the diagonal is off by tens of percent "
        "(second panel, right): each probe also picks up off-diagonal entries, which average "
        "out only slowly. Raise the probes to 64, then 1024: the error shrinks like "
        "1/√probes, never to zero. The exact diagonal costs about as much as a few probes.",
        panel="diagonal",
    ),
    "wide-vs-deep": Lesson(
        "Wide vs deep",
        dict(act="tanh", layers=(8, 8, 8, 8, 8, 8)),
        "Six hidden layers of 8: the network picture shows each layer's share of the Hessian; "
        "the terms of the layers add up to it. Now set hidden layers to 1 and its width to 48, "
        "about as many units: one wide layer carries all the curvature, in one term.",
        panel="layers",
    ),
}
