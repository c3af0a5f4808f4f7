"""What a pretraining run starts from and what it records: the model config (a preset, a config file
or a model folder, with typed ``--set key=value`` overrides), and ``run_config.json``, the run's
resolved options, which ``lmzoo pretrain --run-config FILE`` replays.

A config file is either an HF ``config.json`` (it names a ``model_type``; the family's converter reads
it) or lmzoo's own (``ModelConfig.to_dict()``: it names a ``family``). Overrides are typed by the
``ModelConfig`` field they name, so ``--set d_model=abc`` or ``--set n_layer=2`` is one line, not a
silent default.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmzoo.config import ModelConfig, read_json
from lmzoo.errors import UserError
from lmzoo.io import atomic_write_json

RUN_CONFIG = "run_config.json"
RUN_CONFIG_FORMAT = 1
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_NONE = ("none", "null")


@dataclass(frozen=True)
class ModelSource:
    """Where a run's model comes from: exactly one of a preset name, a config file (random init) or a
    model folder (its weights, config and tokenizer), plus the ``--set`` overrides."""

    preset: str | None = None
    config: str | None = None
    model: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        given = [name for name in ("preset", "config", "model") if getattr(self, name)]
        if len(given) != 1:
            raise UserError("name the model with exactly one of --preset, --config or --model"
                            + (f" (got {', '.join('--' + g for g in given)})" if given else ""))

    @property
    def signature(self) -> dict[str, Any]:
        """What a resume must keep (checked against the checkpoint)."""
        if self.preset:
            named = {"preset": self.preset}
        else:  # a path, compared wherever the resume runs from
            name = "config" if self.config else "model"
            named = {name: str(Path(getattr(self, name)).expanduser().resolve())}
        return {**named, "set": dict(self.overrides)}  # also when empty: a resume that adds --set differs


def _field_types() -> dict[str, str]:
    """ModelConfig field → its annotation as written (``from __future__ import annotations``)."""
    return {f.name: str(f.type) for f in dataclasses.fields(ModelConfig) if f.name != "hf_passthrough"}


def _typed(key: str, text: str, annotation: str) -> Any:
    """``text`` as a value of the field's type; a UserError naming the expected type otherwise."""
    base = annotation.replace(" | None", "").strip()
    if "None" in annotation and text.lower() in _NONE:
        return None
    try:
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "bool":
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if base == "str":
            return text
        return json.loads(text)  # dict fields (id2label): a JSON object
    except ValueError:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(base, f"a {base} (JSON)")
        raise UserError(f"--set {key}={text}: expected {kind}") from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["d_model=256", "dropout=0.0"]`` → typed ``{"d_model": 256, "dropout": 0.0}``; an unknown key,
    a missing ``=`` or a value of the wrong type is a UserError."""
    types, out = _field_types(), {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set takes key=value, got {item!r}")
        if key not in types:
            raise UserError(f"--set {key}: unknown model config field (known: {', '.join(sorted(types))})")
        out[key] = _typed(key, text.strip(), types[key])
    return out


def read_model_config(path: str | Path) -> ModelConfig:
    """An HF ``config.json`` (with ``model_type``) or lmzoo's config (with ``family``) → ModelConfig."""
    from lmzoo.models import MODEL_TYPES

    data = read_json(path)
    if "family" in data:
        return ModelConfig.from_dict(data)
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{path}: neither an lmzoo config (no 'family') nor an HF config.json with a supported "
                        f"model_type (got {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))})")
    try:
        return MODEL_TYPES[model_type].default_architecture.config_from_hf(data)
    except KeyError as e:
        raise UserError(f"{path} lacks the field {e.args[0]!r}") from None


def base_config(source: ModelSource) -> ModelConfig:
    """The model config the source names, overrides applied (validated by ModelConfig)."""
    from lmzoo.hf import read_config
    from lmzoo.presets import preset_config

    if source.preset:
        config = preset_config(source.preset)
    elif source.config:
        config = read_model_config(source.config)
    else:
        config = read_config(source.model)[0]
    try:
        return config.replace(**dict(source.overrides)) if source.overrides else config
    except TypeError as e:  # a value whose type the dataclass check trips over
        raise UserError(f"--set: {e}") from None


def versions() -> dict[str, str]:
    """The versions a run depends on, recorded with its options."""
    import tokenizers
    import torch

    from lmzoo import __version__ as lmzoo_version

    return {"lmzoo": lmzoo_version, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version()}


def write_run_config(out: Path, record: dict[str, Any]) -> None:
    """``out/run_config.json``: the record with its format number and the versions (atomic)."""
    atomic_write_json(out / RUN_CONFIG, {"format": RUN_CONFIG_FORMAT, **record, "versions": versions()})


def read_run_args(path: str | Path) -> dict[str, Any]:
    """The ``args`` section of a run_config.json (the CLI options it replays); a UserError otherwise."""
    data = read_json(path)
    args = data.get("args")
    if data.get("format") != RUN_CONFIG_FORMAT or not isinstance(args, dict):
        raise UserError(f"{path} is not a run_config.json written by lmzoo pretrain")
    return args


def trained_seq_len(folder: str | Path) -> int | None:
    """The sequence length ``folder`` was pretrained at, from its run_config.json (None without one):
    positions beyond it were never trained, whatever the model's ``max_positions``."""
    path = Path(folder) / RUN_CONFIG
    try:
        seq_len = json.loads(path.read_text(encoding="utf-8"))["data"]["seq_len"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seq_len if isinstance(seq_len, int) and seq_len > 0 else None


MODEL_OPTIONS = ("preset", "config", "model")  # one names the model: one given here replaces the file's


def replay_args(args: Any, given: set[str], path: str | Path) -> None:
    """Fill ``args`` (an argparse namespace) from the run config at ``path``: every option not in
    ``given`` (the destinations of the flags typed on the command line) takes the recorded value, so
    a flag given here overrides the file, also at its default value (a model named here replaces the
    recorded one). An option this version does not know is a UserError."""
    recorded = read_run_args(path)
    if given & set(MODEL_OPTIONS):
        recorded = {k: v for k, v in recorded.items() if k not in MODEL_OPTIONS}
    for key, value in recorded.items():
        if not hasattr(args, key) or key.startswith("_"):
            raise UserError(f"{path}: unknown option {key!r} (written by another lmzoo version?)")
        if key not in given:
            setattr(args, key, value)
