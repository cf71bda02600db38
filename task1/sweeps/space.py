"""A search space written in Hydra's sweep syntax, as Optuna distributions (task1.sweeps.search).

`choice(a, b)` and `a,b` -> categorical; `range(start, stop, step)` -> stepped int or float, the stop left out as
in Hydra; `interval(lo, hi)` -> uniform float (Hydra reads its ends as floats); `int(interval(lo, hi))` or
`tag(int, interval(...))` -> uniform int; `tag(log, ...)` -> log-uniform. Hydra's own override parser reads them.
"""

import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from task1 import Task1Error


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (see the module's docstring)."""
    sweep = override.value()
    if override.is_interval_sweep():
        log = "log" in sweep.tags
        if "int" in sweep.tags or (isinstance(sweep.start, int) and isinstance(sweep.end, int)):  # int(interval())
            return IntDistribution(math.ceil(sweep.start), math.floor(sweep.end), log=log)
        return FloatDistribution(sweep.start, sweep.end, log=log)
    if isinstance(sweep, Glob) or not (override.is_choice_sweep() or override.is_range_sweep()):
        raise Task1Error(f"{override.input_line}: Optuna searches choice(...), range(...) and interval(...) "
                         f"sweeps, not this one.")
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise Task1Error(f"{override.input_line}: this sweep has no values.")
    if override.is_range_sweep() and not sweep.shuffle:
        kind = FloatDistribution if any(isinstance(v, float) for v in values) else IntDistribution
        return kind(min(values), max(values), step=abs(sweep.step))
    return CategoricalDistribution(values)


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The sweeps among `overrides` as distributions, and the other overrides as given ({key: override});
    a later override of a key replaces an earlier one (the command line wins over hydra.sweeper.params)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise Task1Error(f"the search space does not parse: {e}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for o in parsed:
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if o.is_sweep_override():
            space[key] = distribution(o)
        else:
            fixed[key] = o.input_line
    return space, fixed


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of each distribution, for Optuna's GridSampler: choices, and the steps of a range."""
    values = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            values[name] = list(d.choices)
        elif d.step is not None and not d.log:  # a range; an int interval steps by 1
            count = round((d.high - d.low) / d.step) + 1
            values[name] = [d.low + i * d.step for i in range(count)]
        else:
            raise Task1Error(f"{name}: a grid search needs choice(...) or range(...), not a continuous interval "
                             f"({d}). Use another sampler (hydra/sweeper/sampler=tpe), or list the values.")
    return values


def override_value(value: Any) -> str:
    """A sampled value as an override's value: quoted when Hydra would read it otherwise."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = str(value)
    if isinstance(value, str):
        try:
            if OverridesParser.create().parse_override(f"k={text}").value() == value:
                return text
        except HydraException:
            pass
        return "'" + text.replace("'", "\\'") + "'"
    return text
