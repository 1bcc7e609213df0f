"""Random walks over the explorer: what a restless student (or a hostile page) does to the controls.

Each walk is a seeded ``random.Random`` sequence of control changes — the widgets' ``.value`` (what
the browser sets), ``set_state`` (what a notebook does), links pasted into the share box, and bursts
of architecture changes with no pause between them — biased towards the extremes (x at ±3, steps
1e-8 and 1, widths 1 and 64, six hidden layers, n = 1 and 8, m = 4, relu/linear, float32).

After every step: nothing raised, no error message, no traceback-like text anywhere in the status
area, the controls show the state, the panels belong to the state, and the change did what it says
(``act`` → ``state.act`` …); and every panel equals a fresh engine computation
(``tests/explorer_checks.py``) — after every step, a burst of rapid changes counting as one.

The walks are reproducible: a failure prints the seed and the last steps. ``HESSVIZ_WALK_SEED=N``
runs one extra walk from seed ``N`` (e.g. to explore new seeds locally).

Also here: the size guard — the largest view the explorer allows is computed and drawn correctly,
absurd sizes (from a query or from a page that bypasses the sliders' bounds) are refused with the
reason, and a long session keeps a bounded number of widgets. (Time and memory are measured by
``benchmarks/misuse_latency.py``, not asserted here: this machine is shared and noisy.)
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable

import pytest
from explorer_checks import assert_figures_match_engine

import hessviz as hv
from hessviz.widgets import ExplorerState, HessianExplorer
from hessviz.widgets.explorer import text_of
from hessviz.widgets.state import (
    MAX_HIDDEN_LAYERS,
    N_INPUTS,
    N_OUTPUTS,
    SAMPLES,
    SEEDS,
    WIDTHS,
    X_RANGE,
    hessian_methods,
)

#: Walk seed → number of steps.
WALKS = {1: 80, 2: 80, 3: 80, 4: 80}
#: Full engine comparison every this many steps (and after each burst); the cheap checks run
#: after every step. 1: the whole file still runs in ~20 s on 2 CPUs.
CHECK_EVERY = 1
#: Text that means an internal error leaked to the user.
TRACEBACK_TEXT = ("Traceback", 'File "', "Error:", "line ", "<module>", "Exception")

#: What a control step moves (x twice: the point is what students move most).
CONTROL_KINDS = (
    "n m layers width act seed x x out dtype method step step_auto samples plane link".split()
)
ACTIVATIONS = hv.ACTIVATIONS
METHODS = hessian_methods()


# -- random values, biased to the extremes --------------------------------------------------------


def pick(rng: random.Random, extremes: list, draw: Callable[[], object]):
    """One of ``extremes`` half of the time, else ``draw()``."""
    return rng.choice(extremes) if rng.random() < 0.5 else draw()


def grid_x(rng: random.Random) -> float:
    return pick(rng, [X_RANGE[0], X_RANGE[1], 0.0], lambda: round(rng.uniform(*X_RANGE), 2))


def width(rng: random.Random) -> int:
    return pick(rng, [WIDTHS[0], WIDTHS[1]], lambda: rng.randint(*WIDTHS))


def step(rng: random.Random) -> float:
    return pick(rng, [1e-8, 1.0], lambda: float(f"{10 ** rng.uniform(-8, 0):.3g}"))


def activation(rng: random.Random) -> str:
    return pick(rng, ["relu", "linear"], lambda: rng.choice(ACTIVATIONS))


def random_state(rng: random.Random) -> ExplorerState:
    n = pick(rng, [1, N_INPUTS[1]], lambda: rng.randint(*N_INPUTS))
    m = pick(rng, [1, N_OUTPUTS[1]], lambda: rng.randint(*N_OUTPUTS))
    depth = pick(rng, [0, MAX_HIDDEN_LAYERS], lambda: rng.randint(0, MAX_HIDDEN_LAYERS))
    plane = tuple(rng.sample(range(n), 2)) if n > 1 else (0, 0)
    return ExplorerState(
        n=n,
        m=m,
        layers=tuple(width(rng) for _ in range(depth)),
        act=activation(rng),
        seed=pick(rng, [0, SEEDS[1]], lambda: rng.randint(*SEEDS)),
        x=tuple(grid_x(rng) for _ in range(n)),
        out=rng.randrange(m),
        dtype=rng.choice(["float64", "float32"]),
        step=None if rng.random() < 0.3 else step(rng),
        method=rng.choice(METHODS),
        samples=pick(rng, [SAMPLES[0], SAMPLES[1]], lambda: rng.randint(*SAMPLES)),
        plane=plane,
    )


# -- one step: an action and what it should have done ----------------------------------------------

Expect = Callable[[ExplorerState, ExplorerState], None]  # (before, after) → assert


class Step:
    def __init__(self, text: str, action: Callable[[], object], expect: Expect | None = None):
        self.text, self.action, self.expect = text, action, expect


def control_step(app: HessianExplorer, rng: random.Random) -> Step:
    """Set one control's ``.value``, as the browser does when a student moves it."""
    s, c = app.state, app.controls
    kind = rng.choice(CONTROL_KINDS)

    def setter(name: str, value) -> Callable[[], None]:
        return lambda: setattr(c[name], "value", value)

    if kind == "n":
        v = pick(rng, [1, N_INPUTS[1]], lambda: rng.randint(*N_INPUTS))
        hidden = [c[f"x{k}"].value for k in range(N_INPUTS[1])]

        def expect(before, after):
            assert after.n == v
            kept = min(before.n, v)
            assert after.x[:kept] == before.x[:kept]
            assert after.x[kept:] == tuple(round(h, 2) for h in hidden[kept:v])

        return Step(f"n ← {v}", setter("n", v), expect)
    if kind == "m":
        v = pick(rng, [1, N_OUTPUTS[1]], lambda: rng.randint(*N_OUTPUTS))
        return Step(f"m ← {v}", setter("m", v), lambda b, a: check(a.m == v and a.out < v))
    if kind == "layers":
        v = pick(rng, [0, MAX_HIDDEN_LAYERS], lambda: rng.randint(0, MAX_HIDDEN_LAYERS))
        widths = tuple(c[f"width{k}"].value for k in range(v))
        return Step(f"layers ← {v}", setter("layers", v), lambda b, a: check(a.layers == widths))
    if kind == "width":
        # Mostly a visible slider; sometimes a hidden one (must change nothing until shown).
        k = rng.randrange(len(s.layers)) if s.layers and rng.random() < 0.8 else rng.randrange(6)
        v = width(rng)
        expected = s.layers[:k] + (v,) + s.layers[k + 1 :] if k < len(s.layers) else s.layers
        return Step(
            f"width{k} ← {v}", setter(f"width{k}", v), lambda b, a: check(a.layers == expected)
        )
    if kind == "act":
        v = activation(rng)
        return Step(f"act ← {v}", setter("act", v), lambda b, a: check(a.act == v))
    if kind == "seed":
        v = pick(rng, [0, SEEDS[1]], lambda: rng.randint(*SEEDS))
        return Step(f"seed ← {v}", setter("seed", v), lambda b, a: check(a.seed == v))
    if kind == "x":
        k = rng.randrange(s.n) if rng.random() < 0.9 else rng.randrange(N_INPUTS[1])
        v = grid_x(rng)

        def expect(before, after):
            if k >= before.n or abs(v - before.x[k]) < 0.004:
                assert after.x == before.x  # a hidden slider, or the slider's own echo
            else:
                assert math.isclose(after.x[k], v, abs_tol=1e-12), (after.x, k, v)
                assert after.x[:k] + after.x[k + 1 :] == before.x[:k] + before.x[k + 1 :]

        return Step(f"x{k} ← {v}", setter(f"x{k}", v), expect)
    if kind == "out":
        v = rng.randrange(s.m)
        return Step(f"out ← {v}", setter("out", v), lambda b, a: check(a.out == v))
    if kind in ("dtype", "method"):
        v = rng.choice(["float64", "float32"] if kind == "dtype" else METHODS)
        return Step(f"{kind} ← {v}", setter(kind, v), lambda b, a: check(getattr(a, kind) == v))
    if kind == "step":
        v = step(rng)
        pushed = c["step"].value

        def expect(before, after):
            if abs(math.log10(v) - math.log10(pushed)) < 0.04:
                assert after.step == before.step  # the slider echoing the explorer's value
            else:
                assert after.step == float(f"{v:.3g}")

        return Step(f"step ← {v:.3g}", setter("step", v), expect)
    if kind == "step_auto":
        v = rng.random() < 0.5
        return Step(
            f"step_auto ← {v}", setter("step_auto", v), lambda b, a: check((a.step is None) == v)
        )
    if kind == "samples":
        v = pick(rng, [SAMPLES[0], SAMPLES[1]], lambda: rng.randint(*SAMPLES))
        return Step(f"samples ← {v}", setter("samples", v), lambda b, a: check(a.samples == v))
    if kind == "plane":
        name = rng.choice(["plane_a", "plane_b"])
        v = rng.randrange(s.n)

        def expect(before, after):
            if before.n > 1:
                assert after.plane[0] != after.plane[1]
                if name == "plane_a":
                    assert after.plane[0] == v
                else:
                    assert after.plane[1] == v or v == before.plane[0]

        return Step(f"{name} ← {v}", setter(name, v), expect)
    # A link pasted into the share box.
    target = random_state(rng)
    link = f"http://127.0.0.1:8866/?{target.to_query()}"
    return Step(f"paste {target.to_query()}", setter("link", link), lambda b, a: check(a == target))


def set_state_step(app: HessianExplorer, rng: random.Random) -> Step:
    """``set_state`` with a few random fields (as a notebook would), or a whole random state."""
    target = random_state(rng)
    if rng.random() < 0.25:
        return Step(f"set_state({target})", lambda: app.set_state(target), check_equals(target))
    fields = rng.sample(sorted(ExplorerState.__dataclass_fields__), rng.randint(1, 4))
    changes = {f: getattr(target, f) for f in fields}
    expected, _ = app.state.replace(**changes).normalized()
    return Step(f"set_state(**{changes})", lambda: app.set_state(**changes), check_equals(expected))


def burst_steps(app: HessianExplorer, rng: random.Random) -> list[Step]:
    """Rapid architecture changes: several in a row, no comparison until the end."""
    steps = []
    for _ in range(rng.randint(3, 6)):
        name = rng.choice(["n", "layers", "width", "act", "seed", "m"])
        value = {
            "n": lambda: rng.randint(*N_INPUTS),
            "layers": lambda: rng.randint(0, MAX_HIDDEN_LAYERS),
            "width": lambda: width(rng),
            "act": lambda: activation(rng),
            "seed": lambda: rng.randint(*SEEDS),
            "m": lambda: rng.randint(*N_OUTPUTS),
        }[name]()
        control = f"width{rng.randrange(MAX_HIDDEN_LAYERS)}" if name == "width" else name
        steps.append(Step(f"burst {control} ← {value}", lambda c=control, v=value: _set(app, c, v)))
    return steps


def _set(app: HessianExplorer, control: str, value) -> None:
    app.controls[control].value = value


def check(condition: bool) -> None:
    assert condition


def check_equals(expected: ExplorerState) -> Expect:
    def expect(before, after):
        assert after == expected

    return expect


# -- what must hold after every step --------------------------------------------------------------


def assert_sound(app: HessianExplorer) -> None:
    """Cheap invariants: no error, no traceback text, controls and panels follow the state."""
    s, c = app.state, app.controls
    assert app.last_error is None, app.last_error
    shown = [text_of(app.status), text_of(app.message)] + [n.value for n in app.notes.children]
    leaked = [t for t in shown if any(marker in t for marker in TRACEBACK_TEXT)]
    assert not leaked, leaked
    assert text_of(app.message) == ""
    assert s.normalized() == (s, [])
    assert app.results is not None and app.results.state == s  # the panels show this state
    assert text_of(app.status).startswith(f"{s.act} network {'×'.join(map(str, s.sizes))}")
    assert (c["n"].value, c["m"].value, c["layers"].value) == (s.n, s.m, len(s.layers))
    assert tuple(c[f"width{k}"].value for k in range(len(s.layers))) == s.layers
    assert (c["act"].value, c["seed"].value, c["dtype"].value) == (s.act, s.seed, s.dtype)
    assert (c["method"].value, c["samples"].value, c["out"].value) == (s.method, s.samples, s.out)
    assert tuple(c[f"x{k}"].value for k in range(s.n)) == s.x
    visible = [c[f"x{k}"].layout.display != "none" for k in range(N_INPUTS[1])]
    assert visible == [k < s.n for k in range(N_INPUTS[1])]
    assert [v for _, v in c["out"].options] == list(range(s.m))
    assert c["step_auto"].value == (s.step is None)
    assert c["link"].value == app.link()


def walk(seed: int, steps: int) -> dict[str, float]:
    """Run one walk; returns timing and counts for the report line."""
    rng = random.Random(seed)
    app = HessianExplorer()
    log: list[str] = []
    done = compared = 0
    start = time.perf_counter()

    def fail(error: BaseException) -> None:
        recent = "\n  ".join(log[-8:])
        pytest.fail(
            f"walk seed={seed}, step {done}: {type(error).__name__}: {error}\n"
            f"state: {app.state}\nlast steps:\n  {recent}",
            pytrace=False,
        )

    while done < steps:
        roll = rng.random()
        if roll < 0.08:
            batch = burst_steps(app, rng)
        elif roll < 0.3:
            batch = [set_state_step(app, rng)]
        else:
            batch = [control_step(app, rng)]
        for item in batch:
            log.append(item.text)
            before = app.state
            try:
                item.action()
                if item.expect is not None:
                    item.expect(before, app.state)
                assert_sound(app)
            except (AssertionError, Exception) as error:  # noqa: BLE001 - report any of it
                fail(error)
            done += 1
        if len(batch) > 1 or done % CHECK_EVERY == 0:
            try:
                assert_figures_match_engine(app)
            except (AssertionError, Exception) as error:  # noqa: BLE001
                fail(error)
            compared += 1
    return {"steps": done, "compared": compared, "seconds": time.perf_counter() - start}


WALK_SEEDS = dict(WALKS)
if os.environ.get("HESSVIZ_WALK_SEED"):
    WALK_SEEDS[int(os.environ["HESSVIZ_WALK_SEED"])] = 80


@pytest.mark.parametrize("seed", WALK_SEEDS, ids=[f"seed{s}" for s in WALK_SEEDS])
def test_random_walk_keeps_the_explorer_sound(seed):
    report = walk(seed, WALK_SEEDS[seed])
    print(
        f"\nwalk seed={seed}: {report['steps']} steps, {report['compared']} engine comparisons, "
        f"{report['seconds']:.1f} s"
    )
    assert report["steps"] >= WALK_SEEDS[seed]


def test_walks_are_reproducible():
    a, b = HessianExplorer(), HessianExplorer()
    for app in (a, b):
        rng = random.Random(7)
        for _ in range(10):
            control_step(app, rng).action()
    assert a.state == b.state and a.query == b.query


# -- memory guard ----------------------------------------------------------------------------------

LARGEST = ExplorerState(
    n=N_INPUTS[1],
    m=N_OUTPUTS[1],
    layers=(WIDTHS[1],) * MAX_HIDDEN_LAYERS,
    act="gelu",
    x=(X_RANGE[1],) * N_INPUTS[1],
    samples=SAMPLES[1],
)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", METHODS)
def test_the_largest_view_is_computed_and_drawn(method, dtype):
    app = HessianExplorer()
    assert app.set_state(LARGEST.replace(method=method, dtype=dtype)), app.last_error
    assert app.results.hessians.shape == (4, 8, 8)
    assert_figures_match_engine(app)


HUGE_QUERY = (
    "n=40000&m=1000&layers=100000,100000,100000&samples=1000000000&x="
    + ",".join(["1"] * 60)
    + "&seed=99999999999&out=999&plane=39999,0"
)


def test_a_query_asking_for_huge_sizes_is_refused_with_the_reason():
    app = HessianExplorer.from_query(HUGE_QUERY)
    s = app.state
    assert (s.n, s.m, s.layers, s.samples, s.seed) == (2, 2, (8, 8), 64, 0)
    notes = " | ".join(label.value for label in app.notes.children)
    for reason in ("n (inputs) = 40000: must be 1–8", "m (outputs) = 1000: must be 1–4",
                   "widths must be 1–64", "samples = 1000000000: must be 1–1024",
                   "seed = 99999999999: must be"):  # fmt: skip
        assert reason in notes, notes
    assert app.last_error is None
    assert_figures_match_engine(app)


#: Control → a value far outside its slider (a page that bypasses the widgets' bounds sends the
#: new bound first, then the value; the kernel must not trust either).
BEYOND = {
    "n": 10**6,
    "m": 10**4,
    "layers": 10**9,
    "width0": 10**6,
    "samples": 10**9,
    "seed": 2**40,
    "x0": 1e300,
    "step": 1e-300,
    "n ": -5,
    "layers ": -3,
    "width0 ": 0,
    "samples ": 0,
    "x0 ": -1e300,
}


@pytest.mark.parametrize("control", BEYOND, ids=[f"{k.strip()}={v:g}" for k, v in BEYOND.items()])
def test_values_beyond_the_sliders_are_refused_with_the_reason(control):
    app = HessianExplorer()
    value = BEYOND[control]
    widget = app.controls[control.strip()]
    before = app.state
    if control.strip() == "step":  # a log slider: its bounds are exponents
        widget.min = math.log10(value)
    elif value > widget.max:
        widget.max = value
    elif value < widget.min:
        widget.min = value
    widget.value = value  # raises nothing
    s = app.state
    assert s.normalized() == (s, [])
    assert 1 <= s.n <= 8 and 1 <= s.m <= 4 and len(s.layers) <= 6 and s.samples <= 1024
    assert all(1 <= w <= 64 for w in s.layers) and all(-3 <= v <= 3 for v in s.x)
    said = " ".join([text_of(app.message)] + [label.value for label in app.notes.children])
    if s == before and app.last_error is None:
        assert "Note:" in said, f"{control}={value}: silently ignored"
    assert not [t for t in TRACEBACK_TEXT if t in said], said
    assert "KeyError" not in said and "IndexError" not in said, said
    app.set_state(ExplorerState())
    assert app.last_error is None
    assert_figures_match_engine(app)


# -- a long session holds what it needs, not more


def live_widgets() -> int:
    """How many widgets the kernel holds (each also lives in the page until closed)."""
    from ipywidgets.widgets.widget import _instances  # the registry behind Widget.widgets

    return len(_instances)


def test_a_long_session_holds_a_bounded_number_of_widgets():
    """300 changes, a third of them links with invalid values (notes come and go): no widget is
    left behind (a replaced one would stay alive in the kernel and the page)."""
    app = HessianExplorer()
    rng = random.Random(11)
    counts = []
    for i in range(300):
        if i % 3 == 0:
            app.apply_query(f"n={rng.randint(-5, 99)}&act=<b>{i}</b>&layers={rng.randint(0, 99)}")
        else:
            control_step(app, rng).action()
        if i in (99, 299):
            counts.append(live_widgets())
    assert counts[1] == counts[0], f"widgets: {counts[0]} after 100 changes, {counts[1]} after 300"
