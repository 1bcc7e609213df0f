"""The explorer's state: a small frozen dataclass that round-trips through a URL query string.

A teacher shares a view as ``?n=2&m=2&layers=8,8&act=tanh&seed=0&x=0.3,-1&out=0&dtype=float64&
step=auto&method=auto&samples=64&plane=0,1``; the Voila dashboard passes ``QUERY_STRING`` to
:meth:`ExplorerState.from_query`. Anything invalid or hostile (absurd sizes, negative or non-numeric
values, markup, very long strings) falls back to the default for that key, with a plain-text note;
parsing never raises.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import hessviz as hv

from .lessons import LESSONS

# Limits of the controls (and of the query string). Widths ≤ 64 and ≤ 6 hidden layers keep every
# update interactive; the input dimension is capped where heatmaps stay readable.
N_INPUTS = (1, 8)
N_OUTPUTS = (1, 4)
MAX_HIDDEN_LAYERS = 6
WIDTHS = (1, 64)
X_RANGE = (-3.0, 3.0)
#: The input point lives on the sliders' grid.
X_DECIMALS = 2
STEPS = (1e-8, 1.0)
SAMPLES = (1, 1024)
SEEDS = (0, 2**31 - 1)
DTYPES = ("float64", "float32")
#: Longer query strings are ignored entirely; longer single values fall back to the default.
MAX_QUERY_CHARS = 2000
MAX_VALUE_CHARS = 200
#: The keys, in the order :meth:`ExplorerState.to_query` writes them.
QUERY_KEYS = ("lesson", "n", "m", "layers", "act", "seed", "x", "out", "dtype", "step", "method",
              "samples", "plane", "view")  # fmt: skip
#: What the landscape panel shows: the function, or its curved part ``f − f₀ − gᵀd``.
VIEWS = ("function", "curvature")
#: Keys that belong to the Jupyter server, not the view: ignored without a note. A Binder link
#: opens the dashboard with ``?token=…`` (Jupyter's login), which is neither shown nor shared.
SERVER_KEYS = frozenset({"token"})


def hessian_methods() -> tuple[str, ...]:
    """``"auto"`` and every registered method that computes the full Hessian (the dropdown)."""
    return ("auto",) + tuple(name for name, m in hv.METHODS.items() if "hessian" in m.computes)


@dataclass(frozen=True)
class ExplorerState:
    """Everything that defines one view of the explorer.

    Attributes:
        n: input dimension, 1–8.
        m: number of network outputs, 1–4.
        layers: hidden widths, 0–6 layers of width 1–64 (``()`` is an affine network).
        act: activation, one of ``hv.ACTIVATIONS``.
        seed: weight seed for ``hv.mlp``.
        x: the input point, ``n`` values in [−3, 3] on a 0.01 grid.
        out: which output's Hessian the single-output panels show, ``0 ≤ out < m``.
        dtype: ``"float64"`` or ``"float32"``: the precision of every computation.
        step: finite-difference step, or ``None`` for the engine's default ``≈ ε^¼·max(1, |x|)``.
        method: ``"auto"`` or a method that computes the Hessian (see :func:`hessian_methods`).
        samples: Hutchinson probe count, 1–1024.
        plane: the two coordinates the landscape panel varies (``(0, 1)``; ignored for ``n = 1``).
        view: what the landscape shows: ``"function"`` ``f``, or ``"curvature"``, its curved part
            ``f − f₀ − gᵀd`` (a steep gradient hides the curvature in ``f`` itself).
        lesson: the lesson this view started from (a key of
            :data:`~hessviz.widgets.lessons.LESSONS`), or ``""``.

    Example:
        >>> state = ExplorerState(act="relu", x=(0.5, -1.25))
        >>> ExplorerState.from_query(state.to_query()) == (state, [])
        True
    """

    n: int = 2
    m: int = 2
    layers: tuple[int, ...] = (8, 8)
    act: str = "tanh"
    seed: int = 0
    x: tuple[float, ...] = (0.3, -1.0)
    out: int = 0
    dtype: str = "float64"
    step: float | None = None
    method: str = "auto"
    samples: int = 64
    plane: tuple[int, int] = (0, 1)
    view: str = "function"
    lesson: str = ""

    @classmethod
    def for_lesson(cls, name: str) -> ExplorerState:
        """The preset view of lesson ``name`` (see :data:`~hessviz.widgets.lessons.LESSONS`)."""
        return cls(lesson=name, **LESSONS[name].changes)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        """``[n, *layers, m]``, the argument of ``hv.mlp``."""
        return [self.n, *self.layers, self.m]

    @property
    def architecture(self) -> tuple:
        """What the model depends on: changing it rebuilds the model."""
        return (self.n, self.m, self.layers, self.act, self.seed)

    def replace(self, **changes) -> ExplorerState:
        """A copy with ``changes`` applied (not yet validated: see :meth:`normalized`)."""
        return dataclasses.replace(self, **changes)

    # -- validation ------------------------------------------------------------------------------
    def normalized(self) -> tuple[ExplorerState, list[str]]:
        """Clamp/repair every field; return the valid state and a note per repaired field.

        Never raises: a field that cannot be read at all falls back to its default. Dependent
        fields follow the ones they depend on (``x`` is padded or cut to ``n``, ``out`` to ``m``,
        ``plane`` to ``n``), silently, because that is what a control change means.
        """
        notes: list[str] = []
        default = ExplorerState()
        fields: dict = {}
        fields["n"] = _int_in(self.n, *N_INPUTS, default.n, "n (inputs)", notes)
        fields["m"] = _int_in(self.m, *N_OUTPUTS, default.m, "m (outputs)", notes)
        fields["layers"] = _widths(self.layers, default.layers, notes)
        fields["act"] = _choice(self.act, hv.ACTIVATIONS, default.act, "act", notes)
        fields["seed"] = _int_in(self.seed, *SEEDS, default.seed, "seed", notes)
        fields["dtype"] = _choice(self.dtype, DTYPES, default.dtype, "dtype", notes)
        fields["method"] = _choice(self.method, hessian_methods(), default.method, "method", notes)
        fields["samples"] = _int_in(self.samples, *SAMPLES, default.samples, "samples", notes)
        fields["step"] = _step(self.step, notes)
        n = fields["n"]
        fields["x"] = _point(self.x, n, notes)
        fields["out"] = _int_in(self.out, 0, fields["m"] - 1, 0, "out", notes, quiet_clamp=True)
        fields["plane"] = _plane(self.plane, n)
        fields["view"] = _choice(self.view, VIEWS, default.view, "view", notes)
        fields["lesson"] = _choice(self.lesson, ("", *LESSONS), "", "lesson", notes)
        return ExplorerState(**fields), notes

    # -- query string ----------------------------------------------------------------------------
    def to_query(self) -> str:
        """The state as a URL query string (no leading ``?``), readable and round-trippable.

        The lesson comes first and only when there is one: a link then reads "this lesson, with
        these settings".

        Example:
            >>> ExplorerState().to_query().split("&")[:6]
            ['n=2', 'm=2', 'layers=8,8', 'act=tanh', 'seed=0', 'x=0.3,-1']
            >>> ExplorerState(step=1e-05).to_query().split("&")[6:11]
            ['out=0', 'dtype=float64', 'step=1e-05', 'method=auto', 'samples=64']
            >>> ExplorerState.for_lesson("relu-is-flat").to_query().split("&")[:2]
            ['lesson=relu-is-flat', 'n=2']
        """
        values = {
            "lesson": self.lesson,
            "n": str(self.n),
            "m": str(self.m),
            "layers": ",".join(str(w) for w in self.layers),
            "act": self.act,
            "seed": str(self.seed),
            "x": ",".join(_number(v) for v in self.x),
            "out": str(self.out),
            "dtype": self.dtype,
            "step": "auto" if self.step is None else repr(float(self.step)),
            "method": self.method,
            "samples": str(self.samples),
            "plane": f"{self.plane[0]},{self.plane[1]}",
            "view": self.view,
        }
        keys = [k for k in QUERY_KEYS if k != "lesson" or self.lesson]
        return urlencode([(k, values[k]) for k in keys], safe=",")

    @classmethod
    def from_query(cls, query: str | None) -> tuple[ExplorerState, list[str]]:
        """Parse a query string (with or without ``?``); never raises.

        Args:
            query: e.g. ``os.environ.get("QUERY_STRING", "")``.

        ``lesson=<name>`` starts from that lesson's preset (:meth:`for_lesson`); the other keys
        override it.

        Returns:
            ``(state, notes)``: missing keys take their defaults silently; every invalid,
            unknown or over-long value falls back to the default and adds one plain-text note
            (values are echoed only in a defanged, shortened form).

        Example:
            >>> state, notes = ExplorerState.from_query("?n=99&act=<script>&x=1,2")
            >>> state.n, state.act, state.x
            (2, 'tanh', (1.0, 2.0))
            >>> len(notes)
            2
        """
        notes: list[str] = []
        default = cls()
        if not isinstance(query, str):
            return default, ([] if query is None else ["ignored a query that is not text"])
        query = query.strip().lstrip("?")
        if len(query) > MAX_QUERY_CHARS:
            return default, [
                f"ignored the whole query string: {len(query)} characters is more than "
                f"{MAX_QUERY_CHARS}; showing the default view"
            ]
        raw: dict[str, str] = {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=50)
        except ValueError:
            return default, ["ignored the query string: too many fields; showing the default view"]
        for key, value in pairs:
            if key in SERVER_KEYS:
                continue
            if key not in QUERY_KEYS:
                notes.append(f"ignored unknown key {echo(key)}")
            elif key in raw:
                notes.append(f"ignored a repeated {key}=; the first one counts")
            elif len(value) > MAX_VALUE_CHARS:
                notes.append(f"ignored {key}=: {len(value)} characters is too long")
            else:
                raw[key] = value

        parsed: dict = {}
        for key, parse in _PARSERS.items():
            if key not in raw:
                continue
            try:
                parsed[key] = parse(raw[key])
            except (ValueError, OverflowError):
                fallback = _shown_default(key)
                if key == "n" and isinstance(parsed.get("x"), tuple):
                    fallback = f"{len(parsed['x'])}, the length of x"
                notes.append(
                    f"ignored {key}={echo(raw[key])}: not {_EXPECTED[key]}; using {fallback}"
                )
        point = parsed.get("x")
        if point is not None and "n" not in parsed:
            # A point alone defines the input dimension (x=0.1,0.2,0.3 means n = 3).
            parsed["n"] = len(point)
        base = default
        lesson = parsed.get("lesson")
        if lesson in LESSONS:
            base = cls.for_lesson(lesson)
        elif lesson:
            notes.append(
                f"ignored lesson={echo(raw['lesson'])}: choose one of {', '.join(LESSONS)}; "
                "showing no lesson"
            )
            parsed["lesson"] = ""
        state = dataclasses.replace(base, **parsed)
        state, repairs = state.normalized()
        if "out" in parsed and state.out != parsed["out"]:
            repairs.append(
                f"changed out={echo(raw['out'])} to {state.out}: there are {state.m} outputs"
            )
        if "plane" in parsed and state.plane != parsed["plane"] and state.n > 1:
            repairs.append(
                f"changed plane={echo(raw['plane'])} to {state.plane[0]},{state.plane[1]}: "
                f"the plane needs two different coordinates below n = {state.n}"
            )
        if point is not None and len(point) != state.n:
            fix = f"cut to {state.n}" if len(point) > state.n else "padded with zeros"
            repairs.append(f"x had {len(point)} value(s) for n = {state.n} inputs; {fix}")
        return state, notes + repairs


# -- helpers: echo, numbers ----------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9 .,+\-_]")


def echo(value: object, limit: int = 24) -> str:
    """A defanged, shortened rendering of user input for notes: ``'<b>' → "'?b?'"``.

    Only letters, digits, spaces and ``.,+-_`` survive; markup can never reach the page.

    Example:
        >>> echo("<script>alert(1)</script>")
        "'?script?alert?1???script…'"
    """
    text = _SAFE.sub("?", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    return f"'{text}'"


def _number(value: float, digits: int = 6) -> str:
    """Shortest readable decimal: ``-1.0 → '-1'``, ``0.3 → '0.3'``, ``1e-05 → '1e-05'``."""
    text = f"{value:.{digits}g}"
    return "0" if text == "-0" else text


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a bool is not a count")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError("not an integer")
        return int(value)
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d{1,12}", text):
        raise ValueError("not an integer")
    return int(text)


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a bool is not a number")
    text = str(value).strip() if not isinstance(value, (int, float)) else value
    if isinstance(text, str) and not re.fullmatch(r"[+-]?[0-9.]{1,30}(e[+-]?\d{1,3})?", text, re.I):
        raise ValueError("not a number")
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _int_list(text: str) -> tuple[int, ...]:
    text = text.strip()
    return () if text in ("", "none") else tuple(_to_int(part) for part in text.split(","))


def _float_list(text: str) -> tuple[float, ...]:
    return tuple(_to_float(part) for part in text.split(","))


def _step_value(text: str) -> float | None:
    return None if text.strip().lower() in ("", "auto") else _to_float(text)


_PARSERS: dict[str, Callable[[str], object]] = {
    "x": _float_list,  # first: a point alone defines n
    "n": _to_int,
    "m": _to_int,
    "layers": _int_list,
    "act": str,
    "seed": _to_int,
    "out": _to_int,
    "dtype": str,
    "step": _step_value,
    "method": str,
    "samples": _to_int,
    "plane": _int_list,
    "view": str,
    "lesson": str,
}
_EXPECTED = {
    "n": "an integer",
    "m": "an integer",
    "layers": "comma-separated widths",
    "seed": "an integer",
    "x": "comma-separated numbers",
    "out": "an integer",
    "step": "a number or auto",
    "samples": "an integer",
    "plane": "two coordinate indices",
    "act": "text",
    "dtype": "text",
    "method": "text",
    "view": "text",
    "lesson": "text",
}


def _shown_default(key: str) -> str:
    value = getattr(ExplorerState(), key)
    if isinstance(value, tuple):
        return ",".join(_number(v) for v in value) or "none"
    return "auto" if value is None else str(value)


# -- helpers: field repair -----------------------------------------------------------------------


def _int_in(
    value, low: int, high: int, default: int, name: str, notes: list, *, quiet_clamp=False
) -> int:
    try:
        number = _to_int(value)
    except (ValueError, TypeError, OverflowError):
        notes.append(f"ignored {name} = {echo(value)}: not an integer; using {default}")
        return default
    if low <= number <= high:
        return number
    if quiet_clamp:
        return min(max(number, low), high)
    notes.append(f"ignored {name} = {number}: must be {low}–{high}; using {default}")
    return default


def _choice(value, options: Iterable[str], default: str, name: str, notes: list) -> str:
    options = tuple(options)
    if isinstance(value, str) and value in options:
        return value
    notes.append(
        f"ignored {name} = {echo(value)}: choose one of {', '.join(options)}; using {default}"
    )
    return default


def _widths(value, default: tuple[int, ...], notes: list) -> tuple[int, ...]:
    try:
        widths = tuple(_to_int(w) for w in value)
    except (ValueError, TypeError, OverflowError):
        notes.append(f"ignored layers = {echo(value)}: not a list of widths; using default")
        return default
    if len(widths) > MAX_HIDDEN_LAYERS:
        notes.append(
            f"ignored layers: {len(widths)} hidden layers is more than {MAX_HIDDEN_LAYERS}; "
            "using default"
        )
        return default
    if not all(WIDTHS[0] <= w <= WIDTHS[1] for w in widths):
        notes.append(
            f"ignored layers = {echo(','.join(map(str, widths)))}: widths must be "
            f"{WIDTHS[0]}–{WIDTHS[1]}; using default"
        )
        return default
    return widths


def _step(value, notes: list) -> float | None:
    if value is None:
        return None
    try:
        step = _to_float(value)
    except (ValueError, TypeError, OverflowError):
        notes.append(f"ignored step = {echo(value)}: not a number; using auto")
        return None
    if not STEPS[0] <= step <= STEPS[1]:
        notes.append(f"ignored step = {_number(step)}: must be between 1e-08 and 1; using auto")
        return None
    return step


def _point(value, n: int, notes: list) -> tuple[float, ...]:
    try:
        coords = [_to_float(v) for v in value]
    except (ValueError, TypeError, OverflowError):
        notes.append(f"ignored x = {echo(value)}: not a list of numbers; using 0")
        coords = []
    low, high = X_RANGE
    if any(not low <= v <= high for v in coords):
        notes.append(f"clipped x to [{low:g}, {high:g}]")
    coords = [min(max(v, low), high) for v in coords]
    coords = (coords + [0.0] * n)[:n]
    return tuple(round(v, X_DECIMALS) + 0.0 for v in coords)


def _plane(value, n: int) -> tuple[int, int]:
    try:
        a, b = (_to_int(v) for v in value)
    except (ValueError, TypeError, OverflowError):
        a, b = 0, 1
    top = max(n - 1, 0)
    a = min(max(a, 0), top)
    b = min(max(b, 0), top)
    if a == b and n > 1:
        b = (a + 1) % n
    if n == 1:
        a, b = 0, 0
    return (a, b)
