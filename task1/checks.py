"""Ranges that type annotations carry (`Annotated[int, Check(...)]`), for the config check to read.

A class's signature says what it takes: `batch_size: PositiveInt` is an integer >= 1, a `Literal` its allowed
values, `X | None` that null is allowed. `task1.core.config` reads these (and nothing else) from the signatures
of task1's classes and from the dataclasses of `task1.core.schema`. Nothing is imported here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal


@dataclass(frozen=True)
class Check:
    """What a value must also be, beside its type; `allowed` says it in the words of the error message."""

    allowed: str
    ok: Callable[[Any], bool] | None = None


PositiveInt = Annotated[int, Check("an integer >= 1", lambda v: v >= 1)]
NonNegativeInt = Annotated[int, Check("an integer >= 0", lambda v: v >= 0)]
Positive = Annotated[float, Check("a number > 0", lambda v: v > 0)]
NonNegative = Annotated[float, Check("a number >= 0", lambda v: v >= 0)]
Fraction = Annotated[float, Check("a number in [0, 1]", lambda v: 0 <= v <= 1)]
OpenFraction = Annotated[float, Check("a number in [0, 1)", lambda v: 0 <= v < 1)]
Folder = Annotated[str, Check("a folder")]
InitStd = Positive | None  # weights ~ N(0, init_std); None: torch's default uniform init
BiasInit = Literal["zeros", "normal", "default"]
