"""Argument checks shared by the benchmarks. A typo must fail at once, not minutes into a device lease: a misspelt
--compiled-arms measured nothing and exited 0, and --per-class 0 rebuilt the cached photo set empty."""
import argparse
import math
from typing import Callable, Iterable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
        return value
    return parse


def positive(text: str) -> float:
    """An argparse type: a number > 0 (a throughput; 0 divided by zero, and was taken as 'not given')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1] (an efficiency)."""
    value = positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at most 1")
    return value


def names_from(valid: Iterable[str], allow_all: bool = False) -> Callable[[str], str]:
    """An argparse type: a comma list of names from `valid` (or 'all'), returned as given once checked."""
    valid = list(valid)

    def parse(text: str) -> str:
        if allow_all and text == "all":
            return text
        unknown = [name for name in text.split(",") if name not in valid]
        if unknown:
            choices = ", ".join(valid) + (", or all" if allow_all else "")
            raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r}; choose from {choices}")
        return text
    return parse


def resolutions(text: str) -> str:
    """An argparse type: a comma list of image sides in pixels (>= 16), returned as given once checked."""
    for part in text.split(","):
        at_least(16)(part)
    return text
