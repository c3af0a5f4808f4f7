"""``lmzoo serve``: the inference verbs over HTTP (FastAPI + uvicorn, the optional extra ``lmzoo[serve]``).

    lmzoo serve runs/gpt runs/bert mt=runs/t5-translate [--host 127.0.0.1] [--port 8000] [--quantize int8]
                [--compile]

loads each folder named (under its folder name, or ``name=folder``) and nothing else, then serves
lmzoo's JSON endpoints (``/api/*``), an OpenAI-compatible API (``/v1/*``) for the decoder-only LMs,
``/health``, ``/openapi.json`` and the playground page at ``/``. See docs/serve.md.

``add_arguments`` and ``run`` are the verb's two halves (``lmzoo.cli`` registers them);
``python -m lmzoo.serve`` runs the same.
"""

from __future__ import annotations

import argparse
import sys

from lmzoo.errors import UserError

HELP = "serve models over HTTP: JSON endpoints, an OpenAI-compatible API and a playground page"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve verb's arguments."""
    p.add_argument("models", nargs="+", metavar="RUN_OR_MODEL",
                   help="model folders (with their tokenizers) to serve, each as FOLDER or NAME=FOLDER")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--quantize", choices=["int8"], help="int8 weight-only quantization of every model "
                   "(bf16 activations): faster decoding, slightly different outputs")
    p.add_argument("--compile", action="store_true", help="torch.compile each generating model's decoding "
                   "step (same output; the first request to each model pays a one-time compile)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    """Load the models, then serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("lmzoo serve needs FastAPI and uvicorn: pip install 'lmzoo[serve]'") from None
    from lmzoo.serve.app import create_app
    from lmzoo.serve.registry import load_models

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    models = load_models(args.models, quantize=args.quantize, compile=args.compile)
    for m in models.values():
        print(f"{m.name}: {m.model.hf_architecture} from {m.folder}; tools: {', '.join(m.tools)}", file=sys.stderr)
    uvicorn.run(create_app(models), host=args.host, port=args.port, log_level=args.log_level)
    return 0


__all__ = ["HELP", "add_arguments", "run"]
