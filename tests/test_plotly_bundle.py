"""plotly.js's cartesian bundle: every figure hessviz draws has only trace types it registers (a
missing one is a blank plot, with no error), it is used only at plotly.py's own plotly.js version,
and without it (no npm, a failed download) pages get plotly.py's full bundle."""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from test_for_model import build

from hessviz import _plotly_bundle as bundle
from hessviz.widgets import HessianExplorer, PlotWidget
from hessviz.widgets import figure_widget as fw
from hessviz.widgets.lessons import LESSONS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hessviz"
_SCRIPT = importlib.util.spec_from_file_location(
    "fetch_plotly_js", ROOT / "scripts" / "fetch_plotly_js.py"
)
fetch_plotly_js = importlib.util.module_from_spec(_SCRIPT)
_SCRIPT.loader.exec_module(fetch_plotly_js)
#: Explorer views beyond the default and the lessons: every panel variant (one input, many,
#: piecewise-linear, float32, Hutchinson) and a query that opens the landscape view.
QUERIES = [
    "n=1&m=1&layers=4",
    "n=8&m=4&layers=16,16,16&act=relu",
    "act=softplus&dtype=float32&method=hutchinson&samples=16",
    "view=curvature&act=sigmoid",
]


def header(variant: str, version: str) -> str:
    name = f"plotly.js ({variant}) v{version}" if variant else f"plotly.js v{version}"
    return f"/**\n* {name}\n* Copyright 2012-2026, Plotly, Inc.\n*/\n"


def fake_bundle(path: Path, variant: str, version: str, traces=("scatter", "heatmap")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    modules = "".join(f'{{moduleType:"trace",name:"{t}"}},' for t in traces)
    path.write_text(header(variant, version) + f"var Plotly=[{modules}];")
    return path


def trace_types_drawn() -> set[str]:
    """Every trace type in every panel of the explorers a page can show (the dashboard's, its
    lessons and views, the race, and ``for_model`` on a vector and an image model)."""
    apps = [HessianExplorer(), *(HessianExplorer.from_query(q) for q in QUERIES)]
    apps += [HessianExplorer.from_query(f"lesson={key}") for key in LESSONS]
    apps[0].run_race(seconds_per_method=0.001)
    specs = [panel.plot.spec for app in apps for panel in app.panels.values()]
    for name in ("mlp", "cnn"):
        model, x, names = build(name)
        specs += [
            panel.plot.spec
            for panel in HessianExplorer.for_model(model, x, **names).panels.values()
        ]
    assert all(spec["data"] for spec in specs[:3]), "the explorer drew nothing"
    return {trace.get("type", "scatter") for spec in specs for trace in spec["data"]}


def trace_types_in_source() -> dict[str, set[str]]:
    """File → trace types its code names: ``{"type": "<trace>"}``, ``dict(type=…)``,
    ``go.<Trace>(…)`` in the figure builders and widgets (types read from the full bundle)."""
    every = bundle.trace_types(bundle.full_bundle())
    classes = {name.replace("_", ""): name for name in every}
    found: dict[str, set[str]] = {}
    for path in [*(PACKAGE / "figures").glob("*.py"), *(PACKAGE / "widgets").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Dict):
                names = [
                    v.value
                    for k, v in zip(node.keys, node.values)
                    if isinstance(k, ast.Constant) and k.value == "type"
                    if isinstance(v, ast.Constant)
                ]
            elif isinstance(node, ast.Call):
                names = [k.value.value for k in node.keywords if k.arg == "type"]
                names = [n for n in names if isinstance(n, str)]
                func = node.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    if func.value.id == "go" and func.attr.lower() in classes:
                        names.append(classes[func.attr.lower()])
            hits = {n for n in names if n in every}
            if hits:
                found.setdefault(path.name, set()).update(hits)
    return found


def test_the_cartesian_constant_matches_the_installed_bundle():
    path = bundle.cartesian_bundle()
    if path is None:
        pytest.skip("plotly.js's cartesian bundle is not installed here (./dev installs it)")
    assert bundle.trace_types(path) == bundle.CARTESIAN_TRACES
    assert bundle.CARTESIAN_TRACES < bundle.trace_types(
        bundle.full_bundle()
    )  # the regex reads both


def test_every_trace_the_explorers_draw_is_in_the_cartesian_bundle():
    drawn = trace_types_drawn()
    assert {"heatmap", "scatter", "bar", "contour"} <= drawn  # the walk reached every kind
    assert drawn <= bundle.CARTESIAN_TRACES, drawn - bundle.CARTESIAN_TRACES


def test_every_trace_the_figure_code_names_is_in_the_cartesian_bundle():
    """Also the builders no explorer view above reaches."""
    found = trace_types_in_source()
    assert "heatmap" in found["_common.py"] and "bar" in found["spectrum.py"]
    outside = {
        f: t - bundle.CARTESIAN_TRACES for f, t in found.items() if t - bundle.CARTESIAN_TRACES
    }
    assert not outside, f"trace types the cartesian bundle lacks (a blank plot): {outside}"


def test_pages_get_the_cartesian_bundle_only_at_plotlys_own_version(tmp_path, monkeypatch):
    version = bundle.full_version()
    assert bundle.cartesian_bundle(tmp_path) is None  # not installed: the full bundle
    target = bundle.cartesian_path(tmp_path)
    assert target.name == f"plotly-cartesian-{version}.min.js"
    fake_bundle(target, "cartesian - minified", "0.0.1")  # another version under this name
    assert bundle.cartesian_bundle(tmp_path) is None
    fake_bundle(target, "", version)  # the full bundle, not the cartesian one
    assert bundle.cartesian_bundle(tmp_path) is None
    fake_bundle(target, "cartesian - minified", version)
    assert bundle.cartesian_bundle(tmp_path) == target
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    assert bundle.bundle() == target
    assert bundle.served_name(target) == f"plotly-cartesian-{version}.min.js"
    monkeypatch.setenv(bundle.BUNDLE_ENV, "full")
    assert bundle.bundle() == bundle.full_bundle()
    assert bundle.served_name(bundle.bundle()) == f"plotly-{version}.min.js"


def fake_npm(tmp_path: Path, code: str | None) -> str:
    """An ``npm`` whose ``pack`` writes a package holding ``code`` (``None``: npm fails)."""
    tmp_path.mkdir()
    tgz = tmp_path / "package.tgz"
    if code is not None:
        with tarfile.open(tgz, "w:gz") as archive:
            data = code.encode()
            info = tarfile.TarInfo(bundle.PACKAGE_FILE)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    npm = tmp_path / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        + ('echo "404 Not Found" >&2; exit 1\n' if code is None else "")
        + f'while [ "$1" != --pack-destination ]; do shift; done; cp {tgz} "$2/pkg.tgz"\n'
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return str(npm)


def test_fetch_installs_the_right_version_and_never_fails(tmp_path, capsys):
    """``scripts/fetch_plotly_js.py``, with a stand-in for npm."""
    version = bundle.full_version()
    prefix = tmp_path / "env"
    good = header("cartesian - minified", version) + 'x={moduleType:"trace",name:"scatter"}'
    wrong = header("cartesian - minified", "9.9.9") + "x=1"
    # No npm, npm failing, a package of another version: nothing installed, no exception.
    assert fetch_plotly_js.fetch(prefix, npm=str(tmp_path / "no-such-npm")) is None
    assert fetch_plotly_js.fetch(prefix, npm=fake_npm(tmp_path / "a", None)) is None
    assert fetch_plotly_js.fetch(prefix, npm=fake_npm(tmp_path / "b", wrong)) is None
    assert not bundle.cartesian_path(prefix).exists()
    assert "full plotly.js" in capsys.readouterr().err
    installed = fetch_plotly_js.fetch(prefix, npm=fake_npm(tmp_path / "c", good))
    assert installed == bundle.cartesian_path(prefix) and installed.read_text() == good
    assert [p.name for p in installed.parent.iterdir()] == [installed.name]  # no partial file
    assert bundle.install(wrong.encode(), prefix) is None and installed.read_text() == good


def test_a_plot_refuses_a_trace_type_its_bundle_lacks(tmp_path, monkeypatch):
    """A blank plot says nothing; the widget says what to do instead."""
    lean = fake_bundle(tmp_path / "lean.min.js", "cartesian - minified", bundle.full_version())
    monkeypatch.setattr(fw, "PLOTLY_JS", lean)
    plot = PlotWidget({"data": [{"type": "heatmap", "z": [[1]]}, {"y": [1, 2]}]})
    with pytest.raises(ValueError, match=f"surface .*{bundle.BUNDLE_ENV}=full"):
        plot.figure = {"data": [{"type": "surface", "z": [[1, 2], [3, 4]]}]}
    assert plot.spec["data"][0]["type"] == "heatmap"  # the last good figure stays


@pytest.mark.skipif(os.environ.get(bundle.BUNDLE_ENV) == "full", reason="full bundle chosen")
def test_the_server_serves_the_cartesian_bundle_where_installed():
    from hessviz import serve

    if bundle.cartesian_bundle() is None:
        assert serve.plotly_js_file() == bundle.full_bundle()
    else:
        assert serve.plotly_js_file() == bundle.cartesian_path() == fw.PLOTLY_JS
        (served,) = (serve.plotly_js_folder() / "hessviz").iterdir()
        assert served.name == f"plotly-cartesian-{bundle.full_version()}.min.js"
