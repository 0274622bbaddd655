"""Flag values the commands share, and typer options made from a library's dataclass fields."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer

from mixtures.recipe import RecipeError, parse_tokens

T = TypeVar("T")


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A typer choice type over a library's constant (typer lists the choices and refuses others),
    so that the values are spelled once, where the library checks them."""
    return Enum(name, [(value, value) for value in values], type=str)


def field_option(cls: type, name: str, *param_decls: str, **settings: Any) -> Any:
    """The typer option of field ``name`` of dataclass ``cls``: the field's default (none: required) and
    its ``help`` metadata, so a flag's default and meaning are stated once, in the library; the command
    adds only its spelling (``param_decls``) and command-line checks such as ``min=1``."""
    (spec,) = (spec for spec in dataclasses.fields(cls) if spec.name == name)
    default = ... if spec.default is dataclasses.MISSING else spec.default
    return typer.Option(default, *param_decls, help=spec.metadata["help"], **settings)


def from_params(cls: type[T], params: Mapping[str, Any], **converted: Any) -> T:
    """An instance of dataclass ``cls`` from a command's parameters (``ctx.params``): those named like its
    fields, choices as their plain values, then ``converted``, the fields the command turned into the
    library's types itself (a comma-separated list into a tuple, say)."""
    names = {spec.name for spec in dataclasses.fields(cls)}
    plain = {name: value.value if isinstance(value, Enum) else value for name, value in params.items()}
    return cls(**{name: value for name, value in plain.items() if name in names} | converted)


def token_amount(value: str | None, flag: str = "--tokens") -> int | None:
    """A token amount given on the command line (k/M/B/T suffixes), None if the flag was not given."""
    if value is None:
        return None
    try:
        return parse_tokens(value)
    except ValueError as err:
        raise RecipeError(f"{flag}: {err}") from err


def local_path(value: T | list[T] | None) -> T | list[T] | None:
    """A typer callback for parameters that take local paths (``Path`` or ``str``, or a list): a URL
    is refused, where ``Path`` would quietly turn ``s3://bucket/x`` into the local directory
    ``s3:/bucket/x``. Parameters that also take ``s3://`` and ``hf://`` URLs are strings, with
    `location` as their callback."""
    for path in value if isinstance(value, list) else [value]:
        text = str(path)
        if path is not None and _URL.match(text):
            shown = text if "://" in text else text.replace(":/", "://", 1)  # Path folds the //
            raise typer.BadParameter(f"{shown} is a URL; this takes a local path")
    return value


def location(value: str | list[str] | None) -> Path | str | list[Path | str] | None:
    """A typer callback for string parameters that take a local path or a URL: the path as a
    ``Path``, the URL (``s3://...``, ``hf://...``) as the string given."""
    if isinstance(value, list):
        return [_location(item) for item in value]
    return None if value is None else _location(value)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def _location(value: str) -> Path | str:
    return value if _URL.match(value) else Path(value)
