"""One training loop for every family and task (see lmzoo.train.loop)."""

from lmzoo.train.loop import (
    TrainConfig,
    TrainResult,
    build_optimizer,
    evaluate,
    lr_factor,
    read_metrics,
    train,
    write_loss_curve,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "evaluate",
    "lr_factor",
    "read_metrics",
    "train",
    "write_loss_curve",
]
