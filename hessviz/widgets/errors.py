"""The one wrapper that keeps tracebacks away from the page.

Every widget callback of the explorer runs through :meth:`ErrorGuard.run`: an exception becomes a
short plain-text message in the status area (the full traceback goes to the ``hessviz.widgets``
logger, i.e. the server console), and whatever the callback had not yet changed — in particular
the last good figures — stays as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import hessviz as hv

logger = logging.getLogger("hessviz.widgets")

#: Messages longer than this are cut (a status line is not a log).
MAX_MESSAGE_CHARS = 300


def friendly_message(action: str, error: BaseException) -> str:
    """One short sentence for the user about ``error`` raised while ``action``.

    ``HessvizError`` messages are written for users and shown as they are; anything else is
    reported by type with its first line.

    Example:
        >>> friendly_message("updating", hv.HessvizError("bad size."))
        'Could not finish updating: bad size. The last good figures are kept.'
    """
    if isinstance(error, hv.HessvizError):
        detail = str(error)
    else:
        first_line = (str(error).strip().splitlines() or [""])[0]
        detail = f"{type(error).__name__}" + (f": {first_line}" if first_line else "")
    if len(detail) > MAX_MESSAGE_CHARS:
        detail = detail[: MAX_MESSAGE_CHARS - 1] + "…"
    return f"Could not finish {action}: {detail} The last good figures are kept."


class ErrorGuard:
    """Runs callbacks, turning exceptions into a message passed to ``show``.

    Args:
        show: receives the message (or ``None`` to clear it after a success).

    Attributes:
        last_error: the last message, or ``None`` if the last guarded call succeeded.
        errors: how many guarded calls failed so far.
    """

    def __init__(self, show: Callable[[str | None], None]) -> None:
        self._show = show
        self.last_error: str | None = None
        self.errors = 0

    def run(self, action: str, fn: Callable, *args, clear: bool = True, **kwargs) -> bool:
        """Call ``fn(*args, **kwargs)``; on an exception show a message instead of raising.

        Args:
            action: what the call does, for the message ("updating the view").
            clear: clear a previous message when the call succeeds.

        Returns:
            Whether the call succeeded.
        """
        try:
            fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - this is the one place that catches all
            self.errors += 1
            self.last_error = friendly_message(action, error)
            logger.warning("hessviz explorer: %s failed", action, exc_info=True)
            try:
                self._show(self.last_error)
            except Exception:  # noqa: BLE001 - never let the error display itself raise
                logger.exception("hessviz explorer: could not show an error message")
            return False
        if clear:
            self.last_error = None
            self._show(None)
        return True
