"""Workarounds for upstream bugs, each limited to the versions that have the bug.

Each one has a test in ``tests/test_shims.py`` that checks the bug is still there in the installed
version: once upstream fixes it, that test fails, and the workaround (and the test) can go.

**voila#1458** (Voila ≤ 0.5.13 at least): closing a Voila page sends a kernel-shutdown beacon
with the page's ``_xsrf`` cookie, but Voila's page handler never sets that cookie, so the server
refuses the beacon (403) and every closed page leaves its kernel (~360 MB with torch) running
until the idle cull. :class:`XsrfCookiePageHandler` is Voila's page handler plus the cookie.
:func:`voila_app` (standalone Voila, ``hessviz.serve``) and :func:`use_page_handler` (Voila as a
Jupyter server extension, Binder) put it in place of Voila's — Voila has no setting for it.

**torch's LeafSpec warning** (torch 2.13): ``torch.utils._pytree.LeafSpec`` is marked deprecated
(a ``FutureWarning`` when one is made), yet Inductor's own compile wrapper
(``torch._dynamo.repro.after_aot``) deep-copies every graph it compiles, and an exported graph's
pytree specs hold LeafSpecs: every ``hv.compile`` printed a warning about code that is not the
user's (nor ours). :func:`quiet_leafspec_warning` silences exactly that warning around
:func:`hessviz.compile`'s compiles, on the torch versions in :data:`TORCH_LEAFSPEC_VERSIONS`.

**anywidget's two seconds** (anywidget 0.9–0.11 at least): a widget model whose front-end
module has not loaded two seconds after the model was made (a busy page: eight visitors' pages
in one browser on two cores, a slow laptop loading plotly.js) rejects its ``ready`` promise
("[anywidget] Failed to initialize model."), and every later message from the kernel waits on
that promise: its view still appears, drawn from the state it had, and then never changes — a
plot under a status line that describes another figure. anywidget has no setting for it.
:class:`hessviz.widgets.figure_widget.PlotPanel` puts a fresh plot in place of one whose page
has drawn it before but not the figure the kernel sent it a few seconds ago
(:func:`anywidget_drops_updates` says where that can happen).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings

#: Voila versions known to have voila#1458 (``tests/test_shims.py`` checks the installed one).
VOILA_1458_VERSIONS = ("0.5.",)


#: torch versions known to warn about LeafSpec from their own compiles (``tests/test_shims.py``
#: checks the installed one)
TORCH_LEAFSPEC_VERSIONS = ("2.13.",)
#: the warning's text, as a regular expression
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextlib.contextmanager
def quiet_leafspec_warning():
    """Inside, torch's LeafSpec ``FutureWarning`` is not shown (other warnings are), where the
    installed torch is one of :data:`TORCH_LEAFSPEC_VERSIONS`."""
    import torch

    if not torch.__version__.startswith(TORCH_LEAFSPEC_VERSIONS):
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
        yield


#: anywidget versions known to drop a late model's updates (``tests/test_shims.py`` checks the
#: installed one's front end still does)
ANYWIDGET_LATE_MODEL_VERSIONS = ("0.9.", "0.10.", "0.11.")
#: the page error anywidget raises when it gives up on a model
ANYWIDGET_REJECTION = "[anywidget] Failed to initialize model."


def anywidget_drops_updates() -> bool:
    """Whether the installed anywidget is one of :data:`ANYWIDGET_LATE_MODEL_VERSIONS`."""
    import anywidget

    return anywidget.__version__.startswith(ANYWIDGET_LATE_MODEL_VERSIONS)


def voila_1458_applies() -> bool:
    """Whether the installed Voila is one of :data:`VOILA_1458_VERSIONS`."""
    import voila

    return voila.__version__.startswith(VOILA_1458_VERSIONS)


@functools.cache
def page_handlers() -> tuple[type, type]:
    """``(Voila's page handler, the same plus the _xsrf cookie)``."""
    from voila.tornado.handler import TornadoVoilaHandler

    class XsrfCookiePageHandler(TornadoVoilaHandler):
        async def prepare(self):
            prepared = super().prepare()
            if inspect.isawaitable(prepared):
                await prepared
            self.xsrf_token  # noqa: B018 - reading the token sets the _xsrf cookie

    return TornadoVoilaHandler, XsrfCookiePageHandler


def voila_app() -> type:
    """Voila's application class; with voila#1458, one whose page handler sets the cookie."""
    from voila.app import Voila

    if not voila_1458_applies():
        return Voila
    voila_page, fixed_page = page_handlers()

    class HessvizVoila(Voila):
        def init_handlers(self):
            return [
                (route, fixed_page if handler is voila_page else handler, *rest)
                for route, handler, *rest in super().init_handlers()
            ]

    return HessvizVoila


def use_page_handler(web_app) -> int | None:
    """In a Jupyter server: Voila's page routes get the fixed handler. Returns how many did.

    ``None`` when the installed Voila does not need it. Call it once every extension has added
    its routes (from an extension's ``_start_jupyter_server_extension``).
    """
    if not voila_1458_applies():
        return None
    return sum(_swap(router) for router in (web_app.default_router, web_app.wildcard_router))


def _swap(router) -> int:
    voila_page, fixed_page = page_handlers()
    swapped = 0
    for rule in getattr(router, "rules", ()):
        if rule.target is voila_page:
            rule.target = fixed_page
            swapped += 1
        else:
            swapped += _swap(rule.target)
    return swapped
