"""Argument predicates shared by the ops' Python faces."""

from __future__ import annotations

import numbers


def is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (Python or numpy int/float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
