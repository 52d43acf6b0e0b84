"""A trainer that costs nothing: it stands in for trainers.proxy.ProxyTrainer wherever only
the search machinery is measured or tested (bench/search_overhead.py, bench/coordination.py,
the many-workers storage test), so the storage and the worker loop are all that is under load.
"""

from __future__ import annotations

import random
import time

import torch

from trainers.data import Splits
from trainers.proxy import DeviceData, ProxyResult


class ZeroCostTrainer:
    """Reports one epoch of a random val_acc after sleeping `sleep_s`, and returns."""

    device = torch.device("cpu")

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s

    def fit(self, model, data, report=None, seed=0, checkpoint=None, evaluate_test=False):
        time.sleep(self.sleep_s)
        acc = random.Random(seed).random()
        if report is not None:
            report(1, {"epoch": 1, "val_acc": acc, "train_loss": 1.0, "lr": 0.0,
                       "epoch_seconds": self.sleep_s, "images_per_s": 0.0})
        return ProxyResult("completed", None, acc, 1.0, 1, [self.sleep_s], 0.0, self.sleep_s,
                           None, None)


def zero_data() -> DeviceData:
    """A 20-image stand-in split (the zero-cost trainer never looks at it)."""
    x = torch.zeros(20, 3, 32, 32, dtype=torch.uint8)
    y = torch.arange(20) % 10
    return DeviceData(Splits("zero", [str(i) for i in range(10)], x, y, x, y, x, y, "zero"),
                      torch.device("cpu"))
