"""The one exception hessviz raises for misuse."""


class HessvizError(ValueError):
    """Raised for every misuse of the public API.

    The message names the function and argument, what was received, and how to fix it. When the
    problem was raised by the user's own function, the original exception is chained
    (``raise HessvizError(...) from err``), so ``err.__cause__`` holds it.
    """


class HessvizFallbackWarning(UserWarning):
    """``method="auto"`` changed path during a call: the message says why and what it costs.

    The result is still exact; only the speed differs. ``hv.explain(f, x)`` shows the path
    before a call; ``warnings.simplefilter("error", hv.HessvizFallbackWarning)`` turns the
    change into an error.
    """
