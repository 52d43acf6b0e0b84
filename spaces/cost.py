"""What a config costs: exact parameters, multiply-adds, and (optionally) measured latency
and peak CUDA memory.

MACs are counted with `torch.utils.flop_counter` (which counts 2 FLOPs per multiply-add) on
the meta device: no memory, no compute, so a 168M-parameter model at 224 px costs
milliseconds. Convolutions, linear layers and attention matmuls are counted; element-wise ops,
norms and pooling are not, as in the papers' tables. On the CPU, PyTorch's fused
scaled-dot-product attention has no registered formula and would count as zero; we register
the standard one for it so attention is counted on every device.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torchvision.ops import StochasticDepth

from spaces.family import PROXY_SIZE, Family

_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _SDPA_CPU not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_SDPA_CPU, get_raw=True)
    def _sdpa_cpu_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass of `batch_size` images, on the model's device."""
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Costs:
    """Costs of one model at one image size and class count."""

    params: int
    macs: int
    image_size: int
    num_classes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Layers the flop counter does not count; on the meta device their decompositions still
# cost 90% of the counting time, so they are swapped for Identity first (same shapes).
UNCOUNTED = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GELU, nn.ReLU, nn.SiLU,
             nn.Tanh, nn.Dropout, StochasticDepth)


def _strip_uncounted(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, UNCOUNTED):
            setattr(module, name, nn.Identity())
        else:
            _strip_uncounted(child)
    return module


def costs(family: Family, config: Any, image_size: int, num_classes: int) -> Costs:
    """Exact params and MACs of `config` built for `image_size`: in closed form where the
    family has one (counting costs ~20 ms a model: the search's largest overhead), else
    counted."""
    family.check(config, image_size, num_classes)
    exact = family.exact_costs(config, image_size, num_classes)
    if exact is not None:
        return Costs(*exact, image_size, num_classes)
    return count_costs(family, config, image_size, num_classes)


def count_costs(family: Family, config: Any, image_size: int, num_classes: int) -> Costs:
    """Params and MACs counted on a model built on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = family.build(config, num_classes, image_size)
    params = count_params(model)
    return Costs(params, count_macs(_strip_uncounted(model), image_size), image_size,
                 num_classes)


def target_and_proxy_costs(family: Family, proxy_config: Any, image_size: int = 224,
                           num_classes: int = 1000, proxy_size: int = PROXY_SIZE,
                           proxy_classes: int = 10) -> dict[str, int]:
    """The costs a search records: the target model's (the objectives) beside those of the
    proxy as trained (at `proxy_size`, the data's, on `proxy_classes`)."""
    target = costs(family, family.to_target(proxy_config, image_size), image_size, num_classes)
    at_224 = (target if image_size == 224 else
              costs(family, family.to_target(proxy_config, 224), 224, num_classes))
    proxy = costs(family, family.to_target(proxy_config, proxy_size), proxy_size,
                  proxy_classes)
    return {"params": target.params, "macs": target.macs, "macs_224": at_224.macs,
            "proxy_params": proxy.params, "proxy_macs": proxy.macs}


@dataclass(frozen=True)
class Latency:
    median_ms: float
    device: str
    dtype: str
    batch_size: int
    image_size: int
    repeats: int
    peak_memory_bytes: int | None  # CUDA only

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(model: nn.Module, image_size: int, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, batch_size: int = 1, warmup: int = 5,
                    repeats: int = 20) -> Latency:
    """Median wall time of an inference forward pass after warm-up, plus CUDA peak memory."""
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return Latency(statistics.median(times), str(device), str(dtype).removeprefix("torch."),
                   batch_size, image_size, repeats, peak)
