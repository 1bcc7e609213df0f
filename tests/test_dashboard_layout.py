"""The dashboard's layout and lessons in a real browser, at three screen sizes.

At 1366×768 (a laptop), 800×900 (a projector, half a laptop screen) and 1920×1080: the page does
not overflow sideways, no button or label is clipped, no two plot titles overlap, plots fill the
width they get, and the controls stay in view while the panels scroll — the activation control
is on screen beside the last plot on the two wide screens. Every lesson opens from its deep link
(``?lesson=…``) and shows what it promises (the ReLU lesson: an exact Hessian of zeros and a
finite-difference panel marked as noise).

Screenshots go to ``test-artifacts/layout-*.png`` and ``test-artifacts/lesson-*.png``: look at
them. Uses the server, browser and helpers of ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import pytest
from test_dashboard_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    block_other_hosts,
    chromium,
    dashboard,
)

from hessviz.widgets.lessons import LESSONS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIZES = {"1366x768": (1366, 768), "800x900": (800, 900), "1920x1080": (1920, 1080)}

#: Every panel drawn (a plot with data), in the page's own terms.
_ALL_DRAWN = """() => {
    const plots = document.querySelectorAll('[class*="hv-fig-"] .js-plotly-plot');
    return plots.length >= 7 && Array.from(plots).every((d) => d.data && d.data.length > 0); }"""

#: What the layout checks read: overflow, clipped controls, overlapping plot titles, plot widths.
_MEASURE = """() => {
  const visible = (e) => { const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'; };
  const doc = document.documentElement;
  const app = document.querySelector('.hv-app');
  const clipped = [];
  const controls = 'button, .widget-label, .widget-readout, .hv-section-title';
  for (const e of app.querySelectorAll(controls)) {
    if (!visible(e)) continue;
    const r = e.getBoundingClientRect(), a = app.getBoundingClientRect();
    const text = (e.innerText || '').trim();
    if (!text) continue;
    if (e.scrollWidth > e.clientWidth + 1 || r.left < a.left - 1 || r.right > a.right + 1)
      clipped.push(text.slice(0, 40));
  }
  const overlaps = [], widths = [];
  for (const plot of app.querySelectorAll('[class*="hv-fig-"] .js-plotly-plot')) {
    const name = plot.closest('[class*="hv-fig-"]').className.match(/hv-fig-(\\w+)/)[1];
    const texts = '.annotation-text, text[class*="title"], .legendtext';
    const titles = Array.from(plot.querySelectorAll(texts))
      .filter((t) => (t.textContent || '').trim())
      .map((t) => ({text: t.textContent.trim(), r: t.getBoundingClientRect()}));
    for (let i = 0; i < titles.length; i++) for (let j = i + 1; j < titles.length; j++) {
      const a = titles[i].r, b = titles[j].r;
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 2 && h > 2) overlaps.push([name, titles[i].text, titles[j].text]);
    }
    const svg = plot.querySelector('.main-svg');
    const box = plot.closest('[class*="hv-fig-"]').getBoundingClientRect();
    widths.push([name, svg ? svg.getBoundingClientRect().width : 0, box.width]);
  }
  return {page: [doc.scrollWidth, doc.clientWidth], app: [app.scrollWidth, app.clientWidth],
          clipped, overlaps, widths, checked: app.querySelectorAll(controls).length,
          titles: app.querySelectorAll('.js-plotly-plot .annotation-text').length,
          pageHeight: [doc.scrollHeight, doc.clientHeight]};
}"""

#: Is the activation control on screen, left of the race plot and level with it?
_BESIDE = """() => {
  const act = document.querySelector('.hv-activation').getBoundingClientRect();
  const plot = document.querySelector('.hv-fig-race .js-plotly-plot').getBoundingClientRect();
  const h = window.innerHeight, w = window.innerWidth;
  const onScreen = (r) => r.top >= 0 && r.bottom <= h && r.left >= 0 && r.right <= w;
  const plotVisible = plot.top < h && plot.bottom > 0;
  return {act: onScreen(act), plot: plotVisible, left: act.right <= plot.left};
}"""


def _open(chromium, url: str, query: str, size: tuple[int, int]):  # noqa: F811
    page = chromium.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    block_other_hosts(page)
    page.goto(f"{url}?{query}", wait_until="domcontentloaded")
    page.wait_for_selector(".hv-fig-hessian .js-plotly-plot", timeout=120_000)
    page.wait_for_function(_ALL_DRAWN, timeout=90_000)
    page.wait_for_timeout(1500)  # plots settle at their container's width
    return page, errors


def _scroll_panels_to(page, selector: str) -> None:
    """Scroll the panel area (it scrolls by itself, beside the controls) to ``selector``."""
    page.locator(selector).evaluate("(e) => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(800)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_one_screen_layout(chromium, dashboard, size):  # noqa: F811
    url, _ = dashboard
    page, errors = _open(chromium, url, "", size)
    name = f"{size[0]}x{size[1]}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"layout-{name}-top.png"))
    m = page.evaluate(_MEASURE)
    assert m["checked"] > 30 and m["titles"] > 20, m  # the checks below saw the page
    assert m["page"][0] <= m["page"][1], f"the page overflows sideways: {m['page']}"
    assert m["pageHeight"][0] <= m["pageHeight"][1] + 40, f"one screen: {m['pageHeight']}"
    assert m["app"][0] <= m["app"][1] + 1, f"the explorer overflows sideways: {m['app']}"
    assert not m["clipped"], f"clipped buttons or labels: {m['clipped']}"
    assert not m["overlaps"], f"overlapping plot titles: {m['overlaps']}"
    for panel, plot_width, box_width in m["widths"]:
        assert plot_width >= 0.97 * box_width, f"{panel}: plot {plot_width}px in {box_width}px"
    # The controls stay in view while the panels scroll to the last plot.
    _scroll_panels_to(page, ".hv-panel-race")
    page.screenshot(path=str(ARTIFACTS / f"layout-{name}-last-panel.png"))
    beside = page.evaluate(_BESIDE)
    if size[0] >= 1366:
        assert beside == {"act": True, "plot": True, "left": True}, beside
    else:  # narrow: the controls are a band above the panels, still on screen
        band = page.locator(".hv-controls").bounding_box()
        assert band and band["y"] >= 0 and band["y"] + band["height"] <= size[1]
        assert beside["plot"], beside
    m = page.evaluate(_MEASURE)  # also after scrolling (the race panel's row of widgets)
    assert not m["clipped"] and not m["overlaps"], (m["clipped"], m["overlaps"])
    assert not errors, errors
    page.close()


def _annotations(page, panel: str) -> list[str]:
    return page.evaluate(
        "(p) => document.querySelector(`.hv-fig-${p} .js-plotly-plot`).layout.annotations"
        ".map((a) => a.text || '')",
        panel,
    )


def _trace(page, panel: str, name: str):
    return page.evaluate(
        "([p, n]) => { const t = document.querySelector(`.hv-fig-${p} .js-plotly-plot`).data"
        ".find((t) => t.name === n); return t ? {z: t.z} : null; }",
        [panel, name],
    )


def _check_relu(page):
    exact = _trace(page, "hessian", "exact")
    noise = _trace(page, "hessian", "noise")
    assert all(v == 0 for row in exact["z"] for v in row), exact  # exactly zero
    assert noise and all(v == 1 for row in noise["z"] for v in row), noise  # every cell: noise
    assert any("all noise" in a for a in _annotations(page, "hessian"))
    assert "below the rounding noise floor" in page.inner_text(".hv-caption-hessian")


def _check_saddle(page):
    title = page.evaluate(
        "() => document.querySelector('.hv-fig-spectrum .js-plotly-plot').layout.title.text"
    )
    assert "saddle" in title
    assert any("curved part" in a for a in _annotations(page, "landscape"))


def _check_rounding(page):
    assert "left of the dip" in page.inner_text(".hv-caption-fdstep")


def _check_float32(page):
    assert page.eval_on_selector(".hv-dtype select", "(s) => s.value") == "float32"
    assert "float32's best is" in page.inner_text(".hv-caption-fdstep")


def _check_hutchinson(page):
    assert any("4 samples" in a for a in _annotations(page, "diagonal"))


def _check_wide_vs_deep(page):
    labels = _annotations(page, "layers")
    assert all(any(f"hidden layer {k}</b>" in a for a in labels) for k in range(1, 7)), labels


PROMISES = {
    "saddle-point": _check_saddle,
    "relu-is-flat": _check_relu,
    "rounding-vs-truncation": _check_rounding,
    "float32-vs-float64": _check_float32,
    "hutchinson-is-noisy": _check_hutchinson,
    "wide-vs-deep": _check_wide_vs_deep,
}


def test_every_lesson_has_a_browser_check():
    assert set(PROMISES) == set(LESSONS)


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_lesson_loads_from_its_link_and_shows_what_it_promises(chromium, dashboard, lesson):  # noqa: F811
    url, _ = dashboard
    page, errors = _open(chromium, url, f"lesson={lesson}", (1366, 768))
    text = page.inner_text(".hv-lesson-text")
    assert LESSONS[lesson].title in text and LESSONS[lesson].look[:30] in text
    chosen = page.eval_on_selector(".hv-lesson select", "(s) => s.options[s.selectedIndex].text")
    assert chosen.replace("\xa0", " ") == LESSONS[lesson].title
    assert f"lesson={lesson}" in page.eval_on_selector(".hv-link input", "(i) => i.value")
    PROMISES[lesson](page)
    _scroll_panels_to(page, f".hv-panel-{LESSONS[lesson].panel}")
    page.screenshot(path=str(ARTIFACTS / f"lesson-{lesson}.png"))
    assert not errors, errors
    page.close()
