"""Hugging Face weights ⇄ lmzoo models through per-class key maps, and HF folders read and written.

A key map is a list of (HF module path, lmzoo module path) pairs, ``{}`` standing for a layer
index and ``None`` for a key dropped on load. Weights are only ever read from safetensors or
through ``torch.load(weights_only=True)``: no pickle from a folder is ever executed.

Nothing here knows a family: the model class brings its key map, its config converters and its
prefixes (``lmzoo.models.base.PreTrainedModel``); ``lmzoo.hf`` picks the class from config.json.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from lmzoo.config import ModelConfig, read_json
from lmzoo.errors import UserError
from lmzoo.io import atomic_write_bytes, atomic_write_json
from lmzoo.quantize import refuse_if_quantized

KeyMap = list[tuple[str, "str | None"]]


def prefixed(key_map: KeyMap, hf_prefix: str, our_prefix: str) -> KeyMap:
    """``key_map`` with both sides under a prefix (a body's map inside a head model's)."""
    return [(f"{hf_prefix}.{h}", None if o is None else f"{our_prefix}.{o}") for h, o in key_map]


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)") + r"(\..+)?$")


def rename(key: str, key_map: KeyMap, *, to_hf: bool) -> str | None:
    """Map one full parameter name across; returns None for a dropped key, raises KeyError if unknown."""
    for hf_pattern, our_pattern in key_map:
        if our_pattern is None and to_hf:
            continue
        source, target = (our_pattern, hf_pattern) if to_hf else (hf_pattern, our_pattern)
        match = _compile(source).match(key)
        if match:
            if target is None:
                return None
            *layer, rest = match.groups()
            name = target.replace("{}", layer[0]) if layer else target
            return name + (rest or "")
    raise KeyError(key)


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The config.json of a model folder, as a dict."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} not found")
    return read_json(folder / "config.json")


def config_of(model_class: Any, hf: dict[str, Any], folder: str | Path) -> ModelConfig:
    """config.json's dict → ModelConfig through the class's family converter."""
    try:
        return model_class.config_from_hf(hf)
    except KeyError as e:
        raise UserError(f"{folder}/config.json lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:  # a family converter doing arithmetic on a field of the wrong type
        raise UserError(f"{folder}/config.json: a field has a value of the wrong type ({e})") from None
    except UserError as e:  # ModelConfig's own checks: say which file holds the bad value
        raise UserError(f"{folder}/config.json: {e}") from None


def index_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` (weight name → shard file) of a sharded folder's
    ``model.safetensors.index.json``; a UserError naming the file when it is not such an index."""
    weight_map = read_json(index).get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise UserError(f"{index}: not a safetensors index (no 'weight_map' of weight names to shard files)")
    return weight_map


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All weights of a folder: model.safetensors, sharded safetensors, or pytorch_model.bin (weights only)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    try:
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
        if index.is_file():
            shards = sorted(set(index_weight_map(index).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(folder / shard))
            return state
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read weights in {folder}: {e} (truncated or corrupt safetensors?)") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe or broken pickle: refuse it, never execute it
            raise UserError(f"cannot read {folder}/pytorch_model.bin safely: {type(e).__name__}") from None
    raise UserError(f"no weights in {folder} (expected model.safetensors or pytorch_model.bin)")


def _normalise_prefix(hf_state: dict[str, torch.Tensor], model_class: Any) -> dict[str, torch.Tensor]:
    """Accept checkpoints with or without the base-model prefix ("bert.", "roberta.", ...)."""
    renamed = {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v for k, v in hf_state.items()}
    prefix = model_class.base_prefix
    if prefix and not any(k.startswith(prefix + ".") for k in renamed):
        return {f"{prefix}.{k}": v for k, v in renamed.items()}  # a bare-model checkpoint into a head model
    body = model_class.prefix_in_heads
    if not prefix and body and any(k.startswith(body + ".") for k in renamed):
        # a head-model checkpoint into the bare model: strip its prefix, heads become unexpected
        return {k.removeprefix(body + "."): v for k, v in renamed.items()}
    return renamed


def convert_from_hf(model: Any, hf_state: dict[str, torch.Tensor], *,
                    source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF state dict → lmzoo state dict for ``model``; shapes checked, missing head weights reported."""
    key_map = model.hf_key_map(model.config)
    expected = {k: v for k, v in model.state_dict().items() if k not in model.tied_parameters()}
    ours: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    hf_state = type(model).hf_tensors_in(model.config, _normalise_prefix(hf_state, type(model)))
    for key, tensor in hf_state.items():
        try:
            name = rename(key, key_map, to_hf=False)
        except KeyError:
            unexpected.append(key)
            continue
        if name is None:
            continue
        if name not in expected:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(
                f"{source}: weight {key} has shape {tuple(tensor.shape)} but the config implies {tuple(expected[name].shape)}"
            )
        ours[name] = tensor
    missing = sorted(set(expected) - set(ours))
    base_missing = [k for k in missing if not _is_head(model, k)]
    if base_missing:
        raise UserError(f"{source}: {len(base_missing)} weights missing, e.g. {base_missing[0]} (wrong model type?)")
    if missing:
        print(f"note: {source} has no weights for {', '.join(sorted({k.rsplit('.', 1)[0] for k in missing}))}; "
              "they are randomly initialised", file=sys.stderr)
    if unexpected:
        print(f"note: ignored {len(unexpected)} weights of {source} this model does not use (e.g. {unexpected[0]})",
              file=sys.stderr)
    return ours


def _is_head(model: Any, key: str) -> bool:
    """Task heads (and the model's ``fresh_modules``) may be absent from a checkpoint: they start from
    random init. The rest of the body may not."""
    return key.split(".")[0] in model.head_modules or any(key.startswith(m + ".") for m in model.fresh_modules)


def convert_to_hf(model: Any) -> dict[str, torch.Tensor]:
    """lmzoo state dict → HF state dict (tied parameters omitted; HF re-ties them)."""
    key_map = model.hf_key_map(model.config)
    tied = model.tied_parameters()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        out[rename(name, key_map, to_hf=True)] = tensor.detach().contiguous().cpu()
    return {k: v.contiguous() for k, v in type(model).hf_tensors_out(model.config, out).items()}


def load_into(model_class: Any, folder: str | Path, config: ModelConfig | None = None) -> nn.Module:
    """A folder's weights in a new ``model_class`` (built from the folder's config unless ``config``)."""
    hf = read_hf_config(folder)
    if hf.get("model_type") not in model_class.model_types:
        raise UserError(f"{folder}/config.json: model_type {hf.get('model_type')!r} cannot load into "
                        f"{model_class.hf_architecture}")
    config = config or config_of(model_class, hf, folder)
    try:
        model = model_class(config)
    except (RuntimeError, MemoryError) as e:  # a config.json far bigger than its weights (a typo'd size)
        if "allocate" not in str(e) and not isinstance(e, MemoryError):
            raise
        raise UserError(f"{folder}/config.json describes a model too big for this machine's memory "
                        f"(vocab_size {config.vocab_size}, d_model {config.d_model}, n_layers {config.n_layers}); "
                        "is a size mistyped?") from None
    state = convert_from_hf(model, read_state_dict(folder), source=str(folder))
    model.load_state_dict(state, strict=False)
    return model.eval()


def save_folder(model: Any, folder: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` in HF format; each file atomically."""
    refuse_if_quantized(model, "save")
    folder = Path(folder)
    hf_config = {"architectures": [model.hf_architecture], **type(model).config_to_hf(model.config)}
    state = convert_to_hf(model)
    atomic_write_bytes(folder / "model.safetensors", safetensors_bytes(state, metadata={"format": "pt"}))
    atomic_write_json(folder / "config.json", hf_config)
