"""Flag values the commands share."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from mixtures.recipe import RecipeError, parse_tokens


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A typer choice type over a library's constant (typer lists the choices and refuses others),
    so that the values are spelled once, where the library checks them."""
    return Enum(name, [(value, value) for value in values], type=str)


def token_amount(value: str | None, flag: str = "--tokens") -> int | None:
    """A token amount given on the command line (k/M/B/T suffixes), None if the flag was not given."""
    if value is None:
        return None
    try:
        return parse_tokens(value)
    except ValueError as err:
        raise RecipeError(f"{flag}: {err}") from err
