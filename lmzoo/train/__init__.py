"""One training loop for every family and task (see lmzoo.train.loop)."""

from lmzoo.train.distributed import is_main_process
from lmzoo.train.lock import locked
from lmzoo.train.loop import (
    RunInterrupted,
    Selection,
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
    "RunInterrupted",
    "Selection",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "evaluate",
    "is_main_process",
    "locked",
    "lr_factor",
    "read_metrics",
    "train",
    "write_loss_curve",
]
