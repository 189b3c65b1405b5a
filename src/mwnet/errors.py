"""Typed errors of the step, so that callers catch a type instead of matching message text."""

from __future__ import annotations


class NonFiniteLossError(ValueError):
    """A loss, weight or gradient of the step is NaN or infinite; the step changed nothing.

    Attributes:
        what: which quantity was non-finite ("training loss", "meta loss", "hypergradient", ...).
    """

    def __init__(self, what: str, detail: str = "") -> None:
        self.what = what
        super().__init__(f"non-finite {what}" + (f": {detail}" if detail else ""))
