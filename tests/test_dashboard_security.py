"""Security: hostile query strings and pasted links, no code evaluation, and what Voila serves.

Headless (no marker):

- the package and the dashboard notebook contain no code-evaluating calls (eval, exec, pickle…);
- the explorer's only text inputs (the share box and the seed) parse a query string / an integer,
  and never evaluate what is typed or pasted;
- hostile query strings beyond test_explorer.py's catalogue (percent-encoding tricks, separators,
  Unicode look-alikes, markup in keys, NaN/inf spellings…) give the default view with plain-text
  notes, and no widget on the page renders any of it as markup;
- voila.json keeps the server's surface small; the page's script URL cannot be forged by headers.

In a real Voila server and browser (``browser``/``slow``):

- every path but the dashboard itself answers 403/404 (no file tree, no other notebook, no file
  contents, no Jupyter API), without starting a kernel;
- URL parameters Voila itself would read (``?template=``, ``?theme=``) change nothing: Voila
  0.5.13 writes ``?theme=`` unescaped into the page (a reflected XSS) and hangs on an unknown
  ``?template=`` with a kernel left running — both overrides are off in voila.json;
- a page opened with ``?act=<script>…&n=99999`` executes nothing and shows the default explorer
  with notes.
"""

from __future__ import annotations

import builtins
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

import ipywidgets as widgets
import numpy as np
import psutil
import pytest
import traitlets
from test_dashboard_browser import (  # noqa: F401 - fixtures and helpers of the browser test
    chromium,
    dashboard,
    engine_values,
    kernel_processes,
    server_process,
    shown,
)
from test_explorer import HOSTILE as EXPLORER_HOSTILE

from hessviz import _plotly_bundle, serve
from hessviz.widgets import ExplorerState, HessianExplorer

ROOT = Path(__file__).resolve().parents[1]

# -- no code evaluation ---------------------------------------------------------------------------

#: Calls that evaluate or deserialize code; none belongs in the package or the dashboard.
EVALUATING = re.compile(
    r"(?<![\w.])(?<!def )(eval|exec|compile|__import__|execfile)\s*\(|\bliteral_eval\b|\bpickle\b"
    r"|\bmarshal\b|\bos\.system\b|\bsubprocess\b|\bimport_module\b|\btorch\.load\b"
    r"|\byaml\.(unsafe_)?load\b|shell\s*=\s*True|\bget_ipython\b|\brun_cell\b"
)


def sources() -> dict[str, str]:
    files = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "hessviz").rglob("*.py")}
    notebook = json.loads((ROOT / "notebooks" / "dashboard.ipynb").read_text())
    files["notebooks/dashboard.ipynb"] = "\n".join(
        "".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"
    )
    return files


def test_no_code_is_evaluated_anywhere_in_the_package_or_the_dashboard():
    found = [
        f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for name, text in sources().items()
        for match in EVALUATING.finditer(text)
    ]
    assert not found, found
    assert EVALUATING.search("x = eval(text)") and not EVALUATING.search("re.compile('a')")
    assert EVALUATING.search("compile(src, 'f', 'exec')")
    assert not EVALUATING.search("def compile(f):")  # a definition (hv.compile), not a call


def text_inputs(root: widgets.Widget) -> list[widgets.Widget]:
    """Every widget in ``root``'s tree where a visitor can type text."""
    kinds = (widgets.Text, widgets.Textarea, widgets.IntText, widgets.FloatText,  # fmt: skip
             widgets.BoundedIntText, widgets.BoundedFloatText, widgets.Password)  # fmt: skip
    return [w for w in walk(root) if isinstance(w, kinds)]


def walk(widget: widgets.Widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


PAYLOADS = [
    "__import__('builtins').__dict__.__setitem__('HV_PWNED', 1)",
    'exec("import builtins; builtins.HV_PWNED = 1")',
    "{{ 7*7 }}${7*7}#{7*7}%(x)s{0.__class__}",
    "$(touch /tmp/hv_pwned); `touch /tmp/hv_pwned`",
    "javascript:window.__pwned=1",
    "<script>window.__pwned=1</script>",
    "?act=<img src=x onerror=window.__pwned=1>&n=__import__('os')",
    "?x=1,2&layers=eval('8')&seed=globals()&samples=1e3",
]


@pytest.fixture(scope="module")
def app() -> HessianExplorer:
    return HessianExplorer()


@pytest.fixture
def spies(monkeypatch):
    """Records every eval/exec call while the test runs (there should be none with a payload)."""
    calls: list[str] = []
    for name in ("eval", "exec"):
        original = getattr(builtins, name)

        def spy(source, globals_=None, locals_=None, /, _original=original):
            calls.append(str(source))
            if globals_ is None:  # eval(text) reads its caller's names (plotly's validators do)
                caller = sys._getframe(1)
                globals_, locals_ = caller.f_globals, caller.f_locals
            return _original(source, globals_, locals_)

        monkeypatch.setattr(builtins, name, spy)
    return calls


def test_the_only_text_inputs_are_the_share_box_and_the_seed(app):
    assert sorted(w._dom_classes[0] for w in text_inputs(app.root)) == ["hv-link", "hv-seed"]
    # The seed box only takes integers: text never reaches the explorer.
    with pytest.raises(traitlets.TraitError):
        app.controls["seed"].value = "__import__('os')"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_pasted_text_is_parsed_as_a_query_string_never_evaluated(app, spies, payload, tmp_path):
    app.set_state(ExplorerState())
    app.controls["link"].value = payload  # what pasting and pressing Enter does
    assert not hasattr(builtins, "HV_PWNED")
    assert not Path("/tmp/hv_pwned").exists()
    assert not [c for c in spies if any(bit in c for bit in ("PWNED", "pwned", "7*7", "('8')"))]
    assert app.last_error is None
    s = app.state
    assert s.normalized() == (s, []) and s.layers == (8, 8) and s.act == "tanh"
    assert app.controls["link"].value == app.link()  # the box shows the (valid) view again
    assert_nothing_renders_as_markup(app)


# -- hostile query strings ------------------------------------------------------------------------

#: Beyond test_explorer.HOSTILE: encodings, separators, look-alikes, markup in keys, odd numbers.
HOSTILE = {
    "encoded-script": "act=%3Cscript%3Ewindow.__pwned%3D1%3C%2Fscript%3E",
    "double-encoded": "act=%253Cscript%253E&n=%2533",
    "plus-as-space": "act=tanh+onerror%3Dalert(1)",
    "amp-injection": "act=tanh%26n%3D99999",
    "semicolon-separator": "n=3;act=<b>",
    "markup-in-key": "<img src=x onerror=alert(1)>=1&n=3",
    "very-long-key": "k" * 1500 + "=1",
    "quotes": "act=\"'><svg/onload=alert(1)>",
    "javascript-url": "method=javascript:alert(document.cookie)",
    "fullwidth-markup": "act=＜script＞alert(1)＜/script＞",
    "rtl-override": "act=tanh\u202egnp.exe",
    "zero-width": "act=ta\u200bnh",
    "null-bytes": "act=tanh%00&n=2%00",
    "crlf": "act=tanh%0d%0aSet-Cookie:%20x=1",
    "nan-spellings": "x=NaN,-nan&step=Infinity",
    "inf-spellings": "x=1e999,-1e999&samples=inf",
    "negative-everything": "m=-1&samples=-5&seed=-1&out=-2&layers=-8",
    "hex-octal": "n=0x8&seed=0o17&samples=1_000",
    "float-for-int": "n=3.0&m=2.5",
    "exponent-for-int": "samples=1e3",
    "empty-values": "n=&m=&act=&x=&step=&layers=,,",
    "only-separators": "&&&===&&",
    "proto-pollution": "__proto__=1&constructor=1&__class__=1",
    "template-syntax": "act={{7*7}}&method=${7*7}",
    "path-traversal": "act=../../etc/passwd&method=..%2F..%2Fetc",
    "huge-exponent-step": "step=1e-99999",
}
ALL_HOSTILE = {**EXPLORER_HOSTILE, **HOSTILE}


@pytest.mark.parametrize("query", ALL_HOSTILE.values(), ids=ALL_HOSTILE.keys())
def test_hostile_queries_give_defaults_and_plain_notes(query):
    state, notes = ExplorerState.from_query(query)
    assert state.normalized() == (state, [])
    assert notes, "every hostile query deserves a note"
    for note in notes:
        assert isinstance(note, str) and len(note) < 300
        assert not set('<>&"`%{}$\u202e\u200b\r\n') & set(note), note


def test_a_hostile_view_renders_nothing_as_markup(app, spies):
    for query in [*HOSTILE.values(), *PAYLOADS]:
        app.apply_query(query)
        assert app.last_error is None, (query, app.last_error)
        assert_nothing_renders_as_markup(app)
    assert not spies


#: Markup that must not reach any widget that renders HTML, nor a plotly title.
MARKUP = re.compile(
    r"<\s*(script|img|svg|iframe|object|embed)|\bon(error|load|click|focus|mouse\w*)\s*="
    r"|javascript:",
    re.I,
)


def assert_nothing_renders_as_markup(app: HessianExplorer) -> None:
    # Every part, on the page or not yet (the lower panels join it after the first plot).
    for widget in (w for part in app._parts() for w in walk(part)):
        if isinstance(widget, widgets.HTML | widgets.HTMLMath):
            assert not MARKUP.search(widget.value), widget.value
        if isinstance(widget, widgets.Label):
            assert widget in app.notes.children or not MARKUP.search(widget.value)
        description = getattr(widget, "description", "")
        assert not MARKUP.search(description or ""), description
        assert not getattr(widget, "description_allow_html", False), widget
    for child in app.notes.children:
        assert type(child) is widgets.Label  # ipywidgets 8 shows a Label's value as plain text
    for figure in app.figures.values():
        texts = json.dumps(figure.to_plotly_json().get("layout", {}))
        assert not MARKUP.search(texts), texts[:300]


# -- the server's configuration -------------------------------------------------------------------


def test_voila_json_keeps_the_surface_small():
    config = json.loads((ROOT / "voila.json").read_text())
    voila, conf = config["Voila"], config["VoilaConfiguration"]
    assert voila["ip"] == "127.0.0.1"  # reachable from this machine only
    assert conf["file_allowlist"] == []  # /voila/files/ serves nothing
    assert conf["show_tracebacks"] is False and conf["strip_sources"] is True
    # Voila 0.5.13 writes ?theme= into the page unescaped (reflected XSS) and hangs, with a
    # kernel left running, on an unknown ?template=: visitors must not choose either.
    assert conf["allow_template_override"] == "NO" and conf["allow_theme_override"] == "NO"
    # A kernel that no page is connected to (a crawler, a closed laptop) is shut down eventually.
    culling = config["MappingKernelManager"]
    assert 0 < culling["cull_idle_timeout"] <= 3600 and culling["cull_interval"] > 0
    assert not culling.get("cull_connected", False)  # an open page is never culled
    # Under load (8 kernels starting on 2 CPUs) the kernel's output reached Voila more than
    # nbclient's default 4 s after the cell finished; Voila then dropped it: a blank page.
    assert config["VoilaExecutor"]["iopub_timeout"] >= 30


@pytest.mark.parametrize(
    "headers",
    [
        {"SERVER_NAME": 'evil.example"><script>'},
        {"SERVER_NAME": "evil.example/x.js#"},
        {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80@evil.example"},
        {"SERVER_NAME": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https://evil.example/x.js#"},
        {"SERVER_NAME": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "javascript"},
    ],
    ids=["host-markup", "host-path", "port-userinfo", "proto-url", "proto-javascript"],
)
def test_forged_headers_cannot_redirect_the_share_link(monkeypatch, headers):
    monkeypatch.setenv(serve.SERVE_ENV, "1")
    monkeypatch.delenv("SERVER_PORT", raising=False)
    for key, value in headers.items():
        monkeypatch.setenv(key, value)
    assert serve.page_url() == ""
    assert serve._visitor_origin() is None


def test_an_ordinary_request_gives_the_visitors_origin(monkeypatch):
    monkeypatch.setenv(serve.SERVE_ENV, "1")
    monkeypatch.setenv("SERVER_NAME", "127.0.0.1")
    monkeypatch.setenv("SERVER_PORT", "8866")
    monkeypatch.setenv("HTTP_X_FORWARDED_PROTO", "https")
    monkeypatch.setenv("SCRIPT_NAME", "/")
    assert serve.page_url() == "https://127.0.0.1:8866/"


# -- a real server --------------------------------------------------------------------------------

#: Paths that must not serve anything: file tree, other notebooks, files, Jupyter's APIs, traversal.
FORBIDDEN_PATHS = [
    "/tree",
    "/tree/notebooks",
    "/voila/tree",
    "/voila/render/notebooks/01_hessian_basics.ipynb",
    "/voila/render/notebooks/dashboard.ipynb",
    "/notebooks/01_hessian_basics.ipynb",
    "/files/README.md",
    "/voila/files/README.md",
    "/voila/files/notebooks/dashboard.ipynb",
    "/voila/files/voila.json",
    "/voila/files/hessviz/serve.py",
    "/voila/files/../README.md",
    "/voila/files/%2e%2e/README.md",
    "/voila/files/..%2fREADME.md",
    "/voila/render/../README.md",
    "/voila/static/../../README.md",
    "/voila/static/..%2f..%2fREADME.md",
    "/voila/templates/lab/static/../../../README.md",
    "/voila/labextensions/../README.md",
    "/voila/api/themes/../README.md",
    "/hessviz/static/../../README.md",
    "/hessviz/static/widgetbundle.js",
    "/hessviz/static/plotly.min.js",
    "/voila/labextensions/hessviz/../../README.md",
    "/voila/labextensions/hessviz/widgetbundle.js",
    "/voila/labextensions/plotly.min.js",
    "/api/contents",
    "/api/contents/README.md",
    "/voila/api/contents",
    "/api/kernels",
    "/api/sessions",
    "/api/kernelspecs",
    "/api/terminals",
    "/terminals/1",
    "/lab",
    "/login",
    "/logout",
    "/.git/config",
    "/README.md",
]
#: Text from files that must never appear in a response.
SECRETS = ("hessviz", "ipynb", "nbformat", "[core]", "VoilaConfiguration", "def ", "torch")


def fetch(url: str, timeout: float = 30) -> tuple[int, str]:
    """``(status, body)``, following redirects (a 4xx/5xx is a result, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def raw_get(base: str, path: str) -> tuple[int, str]:
    """GET ``path`` exactly as written (urllib would normalise ``..``), following redirects."""
    import http.client

    host = urlparse(base)
    for _ in range(5):
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        connection.close()
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location:
            path = urlparse(location).path
            continue
        return response.status, body
    return response.status, body


def kernels(server_pid: int) -> dict[str, psutil.Process]:
    return kernel_processes(psutil.Process(server_pid))


@pytest.fixture(scope="module")
def server_pid(dashboard):  # noqa: F811 - the imported fixture
    """The pid of the Voila server the ``dashboard`` fixture started."""
    return server_process(dashboard[0]).pid


@pytest.mark.browser
@pytest.mark.slow
def test_only_the_dashboard_is_served(dashboard, server_pid):  # noqa: F811
    url, _ = dashboard
    base = url.rstrip("/")
    before = set(kernels(server_pid))
    exposed = []
    for path in FORBIDDEN_PATHS:
        status, body = raw_get(base, path)
        leaked = [s for s in SECRETS if s in body]
        if status < 400 or leaked:
            exposed.append((path, status, leaked, body[:120]))
    assert not exposed, exposed
    # None of those requests started a kernel (each would hold ~400 MB until culled).
    assert set(kernels(server_pid)) == before
    # The one static file hessviz adds: plotly.js (its cartesian bundle where ./dev installed it),
    # through Voila's extra_labextensions_path.
    name = _plotly_bundle.served_name(serve.plotly_js_file())
    with urllib.request.urlopen(f"{base}/voila/labextensions/hessviz/{name}") as response:
        status, body = response.status, response.read().decode()
        cache = response.headers["Cache-Control"]
    assert status == 200 and len(body) > 1_000_000
    assert f"v{serve.plotly_js_version()}" in body[:200] and "plotly.js" in body[:200]
    # Its name says its version and bundle: browsers keep it (Voila's own setting is "no-cache").
    assert cache == "public, max-age=31536000, immutable", cache
    with urllib.request.urlopen(f"{base}/voila/labextensions/anywidget/package.json") as response:
        assert response.headers["Cache-Control"] == "no-cache"  # Voila's own files: as they were


@pytest.mark.browser
@pytest.mark.slow
def test_closing_the_page_ends_its_kernel(chromium, dashboard, server_pid):  # noqa: F811
    """A closed page's kernel (~360 MB) is shut down at once, not left to the idle cull.

    Voila's page sends a shutdown beacon with its ``_xsrf`` cookie, which plain Voila 0.5.13
    never sets: the server answered 403 (voila#1458), and a classroom reloading the dashboard
    piled up kernels for 10 minutes each. ``hessviz.serve``'s page handler sets the cookie.
    """
    url, log_path = dashboard
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{url}?act=sigmoid", wait_until="domcontentloaded")
    page.wait_for_selector(".hv-fig-hessian .js-plotly-plot", timeout=90_000)
    kernel_id = page.evaluate(
        "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"
    )

    def alive() -> bool:
        return kernel_id in kernels(server_pid)

    assert alive()
    page.close(run_before_unload=True)  # what closing the tab does
    context.close()
    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(), "the closed page's kernel is still running"
    assert "403 POST /voila/api/shutdown" not in log_path.read_text()


@pytest.mark.browser
@pytest.mark.slow
def test_visitors_cannot_choose_voilas_template_or_theme(dashboard):  # noqa: F811
    url, _ = dashboard
    start = time.monotonic()
    # Unknown template: before voila.json disabled overrides, this request never finished.
    status, body = fetch(f"{url}?template=latex", timeout=90)
    assert status == 200 and time.monotonic() - start < 90
    assert 'data-jp-theme-name="JupyterLab Light"' in body
    theme = quote('"><script>window.__pwned=1</script>')
    status, body = fetch(f"{url}?theme={theme}", timeout=90)
    assert status == 200
    assert "<script>window.__pwned" not in body  # Voila would write it into <body …> raw
    assert 'data-jp-theme-name="JupyterLab Light"' in body


HOSTILE_PAGE = (
    "?act=<script>window.__pwned=1</script>&n=99999"
    "&method=<img src=x onerror=window.__pwned=2>&x=</script><script>window.__pwned=3</script>"
)


@pytest.mark.browser
@pytest.mark.slow
def test_a_hostile_url_shows_the_default_explorer_and_runs_nothing(chromium, dashboard):  # noqa: F811
    url, _ = dashboard
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.route(
        "**/*",
        lambda r: r.continue_() if urlparse(r.request.url).hostname == "127.0.0.1" else r.abort(),
    )
    page.goto(url + HOSTILE_PAGE, wait_until="domcontentloaded")
    page.wait_for_selector(".hv-note", timeout=120_000)
    page.wait_for_function(
        "() => { const d = document.querySelector('.hv-fig-hessian .js-plotly-plot');"
        " return d && d.data && d.data.length && d.data[0].z && d.data[0].z.length > 0; }",
        timeout=120_000,
    )
    assert page.evaluate("() => window.__pwned") is None
    assert not dialogs
    # Scripts the page runs (not the widget-state JSON, which holds the notes' plain text).
    scripts = page.evaluate(
        """() => Array.from(document.scripts)
            .filter((s) => !s.type || /javascript|module/.test(s.type))
            .map((s) => s.textContent).join('\\n')"""
    )
    assert "__pwned" not in scripts
    assert page.locator("img[src='x']").count() == 0
    assert page.input_value(".hv-activation select") == "tanh"
    notes = page.inner_text(".hv-notes")
    assert "ignored act" in notes and "ignored n (inputs) = 99999" in notes, notes
    assert "ignored method" in notes and "ignored x" in notes, notes
    default = ExplorerState().to_query()
    expected = engine_values(default)
    np.testing.assert_allclose(shown(page)["hessian"], expected["hessian"], rtol=1e-7, atol=1e-10)
    assert shown(page)["link"].endswith("?" + default)
    assert page.inner_text(".hv-message").strip() == ""
    page.close()


def test_hostile_query_notes_name_every_refused_key():
    _, notes = ExplorerState.from_query(HOSTILE_PAGE)
    text = " ".join(notes)
    for key in ("act", "n (inputs)", "method", "x"):
        assert f"ignored {key}" in text, text
