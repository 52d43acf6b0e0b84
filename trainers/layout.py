"""Which memory layout trains a model faster on this device: measured, not assumed.

channels_last is usually the faster layout for convolutions in bf16 on NVIDIA GPUs, but not
for every layer: cuDNN's grouped (depthwise) kernels with large kernels can be many times
slower in channels_last (pytorch/pytorch#34977; a suspect in a ConvMixer at 128 px with 9x9
depthwise convolutions that ran ~50x under its FLOP count on an H100, bench/RESULTS.md). So a
run times a few training steps in each layout on random data and keeps the faster; the
model's weights, buffers and the random state are as before. A resumed run keeps the layout
its checkpoint was written in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def faster_layout(model: nn.Module, example: torch.Tensor, amp_dtype: torch.dtype | None,
                  steps: int = 2, loss: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[str, dict[str, float]]:
    """Time forward+backward of `example` (a batch as training sees it) in each layout; put
    `model` in the faster one and return its name and each layout's seconds per step."""
    device = example.device
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    was_training = model.training
    model.train()
    loss = loss or (lambda out: out.float().square().mean())
    seconds: dict[str, float] = {}
    try:
        for name, layout in LAYOUTS.items():
            model.to(memory_format=layout)
            x = example.contiguous(memory_format=layout)
            for step in range(steps + 1):  # the first is warm-up: the library picks kernels
                if step == 1:
                    _sync(device)
                    start = time.perf_counter()
                with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                    out = model(x)
                loss(out).backward()
            _sync(device)
            seconds[name] = (time.perf_counter() - start) / steps
    finally:  # also after an error (out of memory, say): the model is as it was given
        model.zero_grad(set_to_none=True)
        best = min(seconds, key=seconds.get) if len(seconds) == len(LAYOUTS) else None
        model.to(memory_format=LAYOUTS[best or "contiguous"])
        model.load_state_dict(saved)  # copies into the parameters, keeping their layout
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
    return best, seconds


def choose_layout(model: nn.Module, batch: int, image_size: int,
                  amp_dtype: torch.dtype | None) -> tuple[str, dict[str, float]]:
    """`faster_layout` on a random batch of the run's shape, drawn from a generator of its
    own so that the run's random numbers stay as they were."""
    device = next(model.parameters()).device
    example = torch.randn(batch, 3, image_size, image_size, device=device,
                          generator=torch.Generator(device).manual_seed(0))
    return faster_layout(model, example, amp_dtype)


def starting_layout(model: nn.Module, batch: int, image_size: int,
                    amp_dtype: torch.dtype | None, resuming: bool
                    ) -> tuple[str, dict[str, float]]:
    """The layout a run starts in, with the timings behind it: timed on CUDA; contiguous on
    the CPU (channels_last only costs time there) and for a run that resumes, which takes
    its checkpoint's layout instead (`adopt_checkpoint_layout`)."""
    if resuming or next(model.parameters()).device.type != "cuda":
        return "contiguous", {}
    return choose_layout(model, batch, image_size, amp_dtype)


def adopt_checkpoint_layout(model: nn.Module, state: dict, written_on_cuda: bool) -> str:
    """Put `model` in the layout its checkpoint's tensors are in, before the optimizer's
    state is loaded (that state must match its parameters' layout, and the fused AdamW
    refuses a mismatch), so a run continues as it started. Checkpoints from before the
    layout was recorded were channels_last when written on CUDA."""
    name = state.get("layout") or ("channels_last" if written_on_cuda else "contiguous")
    model.to(memory_format=LAYOUTS[name])
    return name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
