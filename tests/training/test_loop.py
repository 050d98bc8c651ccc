"""The library's one training loop: learning-rate schedule, the step loop by hand, and the
step-counted driver's curves, checkpoints and bit-exact resume."""

import math

import pytest
import torch
from torch import nn

from sparsecraft.training.loop import StepRun, lr_at, resume_steps, run_steps, train_steps


def test_cosine_without_warmup_is_the_plain_formula_bit_for_bit():
    for total, cycle in ((100, None), (37, None), (1000, 64)):
        for step in range(0, total + 5):
            t, n = (step % cycle, cycle) if cycle else (step, total)
            want = 0.1 * 0.5 * (1.0 + math.cos(math.pi * min(t, n) / max(n, 1)))  # the vision job's schedule
            assert lr_at(step, total, 0.1, cycle=cycle) == want
    assert lr_at(50, 100, 0.1) == pytest.approx(0.05) and lr_at(100, 100, 0.1) == 0.0
    assert lr_at(77, 100, 0.1, "constant", warmup=10) == 0.1


def test_warmup_then_cosine_to_the_floor_by_hand():
    lr = lambda t: lr_at(t, 110, 1.0, warmup=10, min_ratio=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(4) == pytest.approx(0.5) and lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)
    assert lr_at(10 + 150, 1000, 1.0, cycle=100, warmup=10) == pytest.approx(0.5)  # cycles restart after warmup


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))


def test_run_steps_by_hand():
    """loss = w * b with batch b = t + 1 and lr = 0.1 (t + 1): plain SGD moves w by -0.1 (t + 1)^2."""
    m = Scalar()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    calls: list[tuple] = []

    def on_step(step, logs):
        calls.append(("after", step, round(logs["loss"], 6), round(m.w.item(), 6)))
        return step == 2

    end = run_steps(m, opt, lambda t: float(t + 1), lambda mod, b: (mod.w * b, {"loss": mod.w.item() * b}),
                    start=0, end=5, lr_fn=lambda t: 0.1 * (t + 1), before_step=lambda t: calls.append(("before", t)),
                    after_update=lambda: calls.append(("update",)), on_step=on_step)
    assert end == 2 and m.w.item() == pytest.approx(1 - 0.1 - 0.4)
    assert calls == [("before", 0), ("update",), ("after", 1, 1.0, 0.9),
                     ("before", 1), ("update",), ("after", 2, 1.8, 0.5)]
    seen = {}
    run_steps(m, opt, lambda t: 3.0, lambda mod, b: (mod.w * b, {"loss": 0.0}), start=7, end=8, lr_fn=lambda t: 1.0,
              grad_clip=0.5, on_step=lambda s, logs: seen.update(logs))
    # w = 0.5 - 1.0 x the gradient 3 clipped to norm 0.5
    assert seen["grad_norm"] == pytest.approx(3.0) and m.w.item() == pytest.approx(0.0, abs=1e-6)
    assert seen["seconds"] >= 0


def _regression(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    losses: list[float] = []

    def batch_at(t):
        g = torch.Generator().manual_seed(t)
        x = torch.randn(4, 3, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss_of(m, b):
        loss = nn.functional.mse_loss(m(b[0]), b[1])
        losses.append(loss.item())
        return loss, {"loss": loss.item(), "tokens": 4}

    return model, opt, batch_at, loss_of, losses


def test_train_steps_curves_checkpoint_and_bit_exact_resume(tmp_path):
    kw = dict(steps=6, lr_fn=lambda t: lr_at(t, 6, 0.05, warmup=2), eval_every=2, settings={"a": 1})
    model, opt, batch_at, loss_of, losses = _regression()
    full = train_steps(model, opt, batch_at, loss_of, checkpoint=tmp_path / "full", **kw,
                       evaluate=lambda t: {"w0": model.weight[0, 0].item()})
    assert [c["step"] for c in full.curves] == [2, 4, 6] and not full.stopped and full.step == 6
    assert full.curves[1]["train_loss"] == pytest.approx((losses[2] + losses[3]) / 2)
    assert full.curves[1]["lr"] == kw["lr_fn"](3) and full.acc["tokens"] == 24

    part_model, part_opt, *rest = _regression()
    part = train_steps(part_model, part_opt, *rest[:2], checkpoint=tmp_path / "part", stop_after=3, **kw)
    assert part.stopped and part.step == 3 and [c["step"] for c in part.curves] == [2]
    fresh, fresh_opt, batch_at, loss_of, _ = _regression(seed=9)  # other init: the checkpoint must replace it
    run, extra = resume_steps(tmp_path / "part", fresh, fresh_opt)
    assert isinstance(run, StepRun) and run.step == 3 and extra["settings"] == {"a": 1}
    done = train_steps(fresh, fresh_opt, batch_at, loss_of, run=run, checkpoint=tmp_path / "part", **kw,
                       evaluate=lambda t: {"w0": fresh.weight[0, 0].item()})
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    strip = lambda cs: [{k: v for k, v in c.items() if k not in ("tokens_per_s", "w0")} for c in cs]  # noqa: E731
    assert strip(done.curves) == strip(full.curves) and done.curves[-1]["w0"] == full.curves[-1]["w0"]
