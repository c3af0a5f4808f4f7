"""Options written once: a frozen dataclass whose fields are also its CLI flags.

A field becomes ``--field-name`` (underscores → dashes) with the field's default and type; its
``metadata`` (``option(...)``) adds the help text, choices or another flag name. A bool is a
``--field-name`` / ``--no-field-name`` switch, so a value replayed from a run config can be
overridden either way. ``add_options`` adds the group, ``options_from_args``
reads it back; the dataclass's ``__post_init__`` validates the values, so a flag never needs a
second check.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from typing import Any


def option(default: Any, help: str = "", *, flag: str | None = None, choices: list[Any] | None = None,
           cli: bool = True) -> Any:
    """A dataclass field with CLI metadata: ``x: float = option(0.15, "share of tokens masked")``.
    ``flag`` overrides the name; ``cli=False`` keeps the field out of the CLI."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "cli": cli})


def _base_type(annotation: Any) -> Any:
    """``float | None`` → float; plain types as they are."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are CLI flags (``flag_name(f)`` spells each)."""
    return [f for f, _ in _fields(cls)]


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)
            and f.init]


class Switch(argparse.BooleanOptionalAction):
    """``--x`` stores True, ``--no-x`` False. Unlike ``BooleanOptionalAction`` on Python < 3.12,
    the help is left as given: the CLI's formatter decides whether a default is shown."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=help, **kwargs)
        self.help = help


def flag_name(f: dataclasses.Field) -> str:
    """The flag that sets ``f`` away from its default (``--no-x`` for a bool default True)."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    name = "--" + f.name.replace("_", "-")
    return f"--no-{f.name.replace('_', '-')}" if f.default is True else name


def add_options(parser: argparse.ArgumentParser | Any, cls: type, title: str | None = None,
                prefix: str = "") -> None:
    """Add one flag per field of ``cls`` (in an argument group named ``title`` when given); the
    destination is ``prefix + field name``, so two dataclasses can share a parser."""
    group = parser.add_argument_group(title) if title else parser
    for f, kind in _fields(cls):
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "help": f.metadata.get("help", "")}
        name = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if kind is bool:
            kwargs.update(action=Switch, default=f.default)
        else:
            kwargs.update(type=kind, default=f.default)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        # the default is not written into the help: the CLI's help formatter prints every flag's default
        group.add_argument(name, **kwargs)


def options_from_args(cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """The dataclass ``cls`` built from the flags ``add_options`` added (validated by ``cls`` itself)."""
    values = {f.name: getattr(args, prefix + f.name) for f, _ in _fields(cls) if hasattr(args, prefix + f.name)}
    return cls(**{**values, **overrides})
