"""The proxy trainer: schedule, augmentation, learning on real data, failures, resume."""

import pytest
import torch
from torch import nn

import spaces
from spaces.convmixer import ConvMixerConfig
from tests.helpers import lrs_of_each_update
from trainers.augment import cutout, random_crop, random_flip
from trainers.data import Splits
from trainers.proxy import ProxyTrainer, Recipe, learning_rate


def test_onecycle_breakpoints_are_in_steps():
    r = Recipe(lr=0.05, schedule="onecycle")
    total = 100
    lrs = [learning_rate(r, s, total) for s in range(total)]
    assert lrs[39] == pytest.approx(0.05)  # step 40 of 100: the peak at 2/5
    assert lrs[79] == pytest.approx(0.05 / 20)  # 4/5
    assert lrs[-1] == pytest.approx(0.0)
    assert lrs[0] > 0 and all(a < b for a, b in zip(lrs[:39], lrs[1:40], strict=True))
    short = [learning_rate(r, s, 5) for s in range(5)]  # a 5-step run still warms up
    assert 0 < short[0] < short[1] == max(short) and short[-1] == 0


def test_cosine_warms_up_then_decays_to_zero():
    r = Recipe(lr=0.01, schedule="cosine", warmup=0.1)
    lrs = [learning_rate(r, s, 100) for s in range(100)]
    assert lrs[9] == pytest.approx(0.01) and lrs[0] == pytest.approx(0.001)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_and_cutout():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(64, 3, 1, 1)
    flipped = random_flip(x, gen)
    is_flipped = [torch.equal(f, x[0].flip(-1)) for f in flipped]
    assert all(is_flipped[i] or torch.equal(flipped[i], x[0]) for i in range(64))
    assert 10 < sum(is_flipped) < 54
    cut = cutout(torch.ones(16, 3, 16, 16), 4, gen)
    zeros = (cut == 0).all(1).sum((1, 2))
    assert ((zeros > 0) & (zeros <= 25)).all()  # a square of side 4 (+1 at the centre), clipped


def tiny_splits(n=256, classes=4, size=16, seed=0):
    """Learnable synthetic data: each class has its own colour."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    colours = torch.linspace(30, 220, classes)
    x = colours[y].view(-1, 1, 1, 1) + torch.randn(n, 3, size, size, generator=gen) * 30
    x = x.clamp(0, 255).to(torch.uint8)
    half = n // 2
    return Splits("tiny", [str(c) for c in range(classes)], x[:half], y[:half], x[half:],
                  y[half:], x[half:], y[half:], "tiny")


def small_model(classes=4):
    torch.manual_seed(0)
    return spaces.get("convmixer").build(ConvMixerConfig(16, 1, 2, 3), classes, 16)


RECIPE = Recipe(epochs=3, batch_size=32, lr=0.01)


def test_reports_every_epoch_and_learns():
    seen = []
    result = ProxyTrainer(RECIPE, device="cpu").fit(
        small_model(), tiny_splits(), report=lambda e, m: seen.append((e, m)),
        evaluate_test=True)
    assert result.status == "completed" and result.epochs == 3
    assert [e for e, _ in seen] == [1, 2, 3]
    for _, m in seen:
        assert {"val_acc", "train_loss", "lr", "epoch_seconds", "images_per_s"} <= set(m)
    assert result.val_acc > 0.5 and result.test_acc is not None
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert len(result.epoch_seconds) == 3 and result.images_per_s > 0


def test_stops_when_told_to():
    result = ProxyTrainer(RECIPE, device="cpu").fit(
        small_model(), tiny_splits(), report=lambda e, m: "stop" if e == 2 else "continue")
    assert result.status == "stopped" and result.epochs == 2


def test_same_seed_same_run_different_seed_different_run():
    a = ProxyTrainer(RECIPE, device="cpu").fit(small_model(), tiny_splits(), seed=1)
    b = ProxyTrainer(RECIPE, device="cpu").fit(small_model(), tiny_splits(), seed=1)
    c = ProxyTrainer(RECIPE, device="cpu").fit(small_model(), tiny_splits(), seed=2)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]


def test_checkpoint_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    recipe = Recipe(epochs=3, batch_size=32, lr=0.01, cutout=4, drop_path=0.0)
    straight = small_model()
    ProxyTrainer(recipe, device="cpu").fit(straight, tiny_splits(), seed=5)

    ckpt = tmp_path / "trial.pt"
    paused = small_model()
    first = ProxyTrainer(recipe, device="cpu").fit(
        paused, tiny_splits(), seed=5, checkpoint=ckpt, report=lambda e, m: "stop")
    assert first.status == "stopped" and first.epochs == 1 and ckpt.exists()
    torch.manual_seed(123)  # the process's RNG moved on meanwhile; the checkpoint restores it
    resumed = small_model()
    result = ProxyTrainer(recipe, device="cpu").fit(resumed, tiny_splits(), seed=5,
                                                    checkpoint=ckpt)
    assert result.status == "completed" and result.epochs == 3 and len(result.history) == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_every_update_uses_exactly_the_schedules_rate(schedule, tmp_path):
    """The scheduler gives update s the rate lr_at gives (as setting it by hand did), also
    after a resume from a checkpoint."""
    recipe = Recipe(epochs=3, batch_size=32, lr=0.01, schedule=schedule, warmup=0.2)
    total = 3 * 4  # 128 training images in batches of 32
    expected = [[learning_rate(recipe, s, total)] * 2 for s in range(total)]

    def fit(**kwargs):
        return ProxyTrainer(recipe, device="cpu").fit(small_model(), tiny_splits(), **kwargs)

    ckpt = tmp_path / "trial.pt"
    first = lrs_of_each_update(lambda: fit(checkpoint=ckpt, report=lambda e, m: "stop"))
    assert first + lrs_of_each_update(lambda: fit(checkpoint=ckpt)) == expected


def test_a_checkpoint_in_the_older_layout_resumes_exactly(tmp_path):
    """Checkpoints written before the RNG states were one entry ("cpu_rng", "cuda_rng") and
    before the scheduler set the rate (no "initial_lr" in the optimizer's groups)."""
    recipe = Recipe(epochs=2, batch_size=32, lr=0.01, cutout=4)
    straight = small_model()
    ProxyTrainer(recipe, device="cpu").fit(straight, tiny_splits(), seed=3)
    ckpt = tmp_path / "trial.pt"
    ProxyTrainer(recipe, device="cpu").fit(small_model(), tiny_splits(), seed=3,
                                          checkpoint=ckpt, report=lambda e, m: "stop")
    state = torch.load(ckpt, weights_only=True)
    rng = state.pop("rng")
    state["cpu_rng"], state["cuda_rng"] = rng["cpu"], rng["cuda"]
    for group in state["optimizer"]["param_groups"]:
        del group["initial_lr"]
    torch.save(state, ckpt)
    resumed = small_model()
    result = ProxyTrainer(recipe, device="cpu").fit(resumed, tiny_splits(), seed=3,
                                                    checkpoint=ckpt)
    assert result.status == "completed" and result.epochs == 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_checkpoint_of_another_recipe_is_refused(tmp_path):
    ckpt = tmp_path / "trial.pt"
    ProxyTrainer(Recipe(epochs=1, batch_size=32), device="cpu").fit(
        small_model(), tiny_splits(), checkpoint=ckpt)
    with pytest.raises(spaces.UserError, match="another recipe"):
        ProxyTrainer(Recipe(epochs=2, batch_size=32), device="cpu").fit(
            small_model(), tiny_splits(), checkpoint=ckpt)


class Explodes(nn.Module):
    """Turns its output to NaN after `after` forward passes in training mode."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_nan_loss_ends_the_run_as_diverged():
    model = Explodes(small_model(), after=6)
    result = ProxyTrainer(RECIPE, device="cpu").fit(model, tiny_splits())
    assert result.status == "diverged" and "NaN" in result.reason
    assert result.epochs == 1  # the first epoch (4 steps) was fine


class RunsOutOfMemory(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_ends_the_run_and_the_next_one_works():
    trainer = ProxyTrainer(RECIPE, device="cpu")
    result = trainer.fit(RunsOutOfMemory(small_model()), tiny_splits())
    assert result.status == "oom" and "out of memory" in result.reason
    assert trainer.fit(small_model(), tiny_splits()).status == "completed"


@pytest.mark.gpu
def test_cuda_run_uses_bf16_and_reports_peak_memory():
    result = ProxyTrainer(RECIPE, device="cuda").fit(small_model(), tiny_splits())
    assert result.status == "completed" and result.peak_memory_bytes > 0


@pytest.mark.gpu
def test_real_cuda_oom_is_caught_and_memory_freed():
    big = spaces.get("convmixer").build(ConvMixerConfig(1536, 32, 1, 9), 4, 16)
    trainer = ProxyTrainer(Recipe(epochs=1, batch_size=65536), device="cuda")
    splits = tiny_splits(n=131072)
    assert trainer.fit(big, splits).status == "oom"
    del big
    assert ProxyTrainer(RECIPE, device="cuda").fit(small_model(), tiny_splits()).status == \
        "completed"


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(spaces.UserError, match="no CUDA device"):
        ProxyTrainer(RECIPE, device="cuda")


def test_a_run_resumes_in_the_layout_its_checkpoint_was_written_in(tmp_path):
    """A checkpoint from a run that chose channels_last (on a GPU, say): the resumed run takes
    that layout on, so its optimizer state matches its parameters (fused AdamW demands it)."""
    recipe = Recipe(epochs=2, batch_size=32, lr=0.01)
    ckpt = tmp_path / "trial.pt"
    ProxyTrainer(recipe, device="cpu").fit(small_model(), tiny_splits(), checkpoint=ckpt,
                                          report=lambda e, m: "stop")
    state = torch.load(ckpt, weights_only=True)
    as_cl = lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t  # noqa: E731
    state["model"] = {k: as_cl(v) for k, v in state["model"].items()}
    for slot in state["optimizer"]["state"].values():
        slot.update({k: as_cl(v) for k, v in slot.items()})
    state["layout"] = "channels_last"
    torch.save(state, ckpt)
    model = small_model()
    result = ProxyTrainer(recipe, device="cpu").fit(model, tiny_splits(), checkpoint=ckpt)
    assert result.status == "completed" and result.epochs == 2
    convs = [p for p in model.parameters() if p.ndim == 4 and min(p.shape[1:]) > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and
                         not p.is_contiguous() for p in convs)


def test_a_channel_that_never_varies_is_normalized_to_finite_values():
    from trainers.proxy import channel_stats

    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    x[:, 2] = 100  # a constant blue channel
    mean, std = channel_stats(x)
    assert std[2] == pytest.approx(1 / 255) and std[0] > 0.1
    assert mean[2] == pytest.approx(100 / 255)
