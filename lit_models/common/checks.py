"""Checks of list-, mapping- and factory-valued constructor arguments: one-line UserErrors naming the key (the
scalar ones use launch.errors.check_min / check_positive)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from launch.errors import UserError, check_min, check_positive, one_line


def _items(name: str, value, what: str) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise UserError(f"{name} must be a list of {what}, got {value!r}")
    return list(value)


def whole_list(name: str, value, low: int | None = 1, min_len: int = 1) -> list[int]:
    """`value` (a list) as a list of whole numbers (>= `low` unless None), at least `min_len` of them; `name` is the
    full key (`model.trunk_layers`)."""
    what = "whole numbers" + (f" >= {low}" if low is not None else "")
    items = _items(name, value, what)
    if len(items) < min_len or not all(_whole(v) and (low is None or v >= low) for v in items):
        raise UserError(f"{name} must be a list of {f'at least {min_len} ' if min_len > 1 else ''}{what}, "
                        f"got {value!r}")
    return [int(v) for v in items]


def number_list(name: str, value, low: float | None = None, min_len: int = 1) -> list[float]:
    """`value` (a list) as a list of finite numbers (each > `low` when given), at least `min_len` of them."""
    what = "finite numbers" + (f" > {low}" if low is not None else "")
    items = _items(name, value, what)
    if len(items) < min_len or not all(_finite(v) and (low is None or v > low) for v in items):
        raise UserError(f"{name} must be a list of {f'at least {min_len} ' if min_len > 1 else ''}{what}, "
                        f"got {value!r}")
    return [float(v) for v in items]


def _whole(v) -> bool:
    """An integer, or a float with a whole value (64.0: accepted before these checks, cast with int())."""
    if isinstance(v, bool):
        return False
    return isinstance(v, numbers.Integral) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_option_kinds(prefix: str, options: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Each option of a mapping (`data.synthetic`, `data.offline`) has its default's kind: a whole number where the
    default is an int (a whole-valued float is made an int in `options`), a finite number where it is a float (text,
    a list or NaN was a traceback or a NaN run)."""
    for key, value in options.items():
        default = defaults.get(key)
        if isinstance(default, bool) or value is None:
            continue
        if isinstance(default, int) and not _whole(value):
            raise UserError(f"{prefix}.{key} must be a whole number, got {value!r}")
        if isinstance(default, int):
            options[key] = int(value)  # 2.0 users: 2
        if isinstance(default, float) and not _finite(value):
            raise UserError(f"{prefix}.{key} must be a finite number, got {value!r}")


def check_scheduler(scheduler, prefix: str = "model.scheduler") -> None:
    """A learning-rate scheduler factory (null: none) is built on a dummy optimizer and stepped twice, so that an
    unknown keyword or a zero step size is a one-line error now rather than a traceback once training runs; a
    partial's `gamma` (decay factor) must be > 0, `step_size` >= 1 and `milestones` whole numbers >= 1 (a negative,
    NaN or text decay, or a milestone that is never reached, trained silently)."""
    import functools
    import warnings

    import torch

    if scheduler is None:
        return
    if not callable(scheduler):
        raise UserError(f"{prefix} must be null or a scheduler factory (a config with _target_ and _partial_: true), "
                        f"got {scheduler!r}")
    kw = scheduler.keywords if isinstance(scheduler, functools.partial) else {}
    if "gamma" in kw:
        check_positive(prefix, gamma=kw["gamma"])
    if "step_size" in kw:
        check_min(prefix, 1, step_size=kw["step_size"])
    if "milestones" in kw:
        whole_list(f"{prefix}.milestones", kw["milestones"], low=1, min_len=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" and the like
            sched = scheduler(opt)
            for _ in range(2):
                opt.step()
                sched.step()
    except (TypeError, ValueError, ZeroDivisionError, KeyError) as err:
        raise UserError(f"{prefix}: {one_line(err)}") from None
