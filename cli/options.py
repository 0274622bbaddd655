"""Flag values the commands share."""

from __future__ import annotations

from mixtures.recipe import RecipeError, parse_tokens


def token_amount(value: str | None, flag: str = "--tokens") -> int | None:
    """A token amount given on the command line (k/M/B/T suffixes), None if the flag was not given."""
    if value is None:
        return None
    try:
        return parse_tokens(value)
    except ValueError as err:
        raise RecipeError(f"{flag}: {err}") from err
