"""The one optimisation loop every training uses: Adam on Dice + BCE over patch batches, the model
being the exponential moving average (EMA) of the weights.

`Run` holds what a loop continues from (network, optimiser, EMA, patch rng, step count) and can
be forked, which is how the synthesis search tries several data mixes from one trunk; `fit` is a
whole training from a fresh Run. Progress and the cancel check go through a `Clock`.
"""

from __future__ import annotations

import copy
import time

from ..errors import Cancelled
from .patches import draw_batch


class Clock:
    """Progress reports and the cancel check, with elapsed time since the start (s)."""

    def __init__(self, start, progress, should_stop):
        self.start, self.progress, self.should_stop = start, progress, should_stop

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("training cancelled; no model was written")

    def report(self, stage: str, step: int, total: int, eta_s: float | None = None, loss: float | None = None) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress({"stage": stage, "step": step, "total": total, "elapsed_s": round(elapsed, 2),
                           "eta_s": None if eta_s is None else round(eta_s, 1), "loss": loss})


class EMA:
    """Exponential moving average of weights and batch-norm buffers (warm start: early steps
    average over fewer steps)."""

    def __init__(self, network, decay: float):
        self.network = copy.deepcopy(network)
        self.decay = decay
        for p in self.network.parameters():
            p.requires_grad_(False)

    def update(self, network, step: int) -> None:
        import torch

        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            ours = self.network.state_dict()
            for name, value in network.state_dict().items():
                if value.dtype.is_floating_point:
                    ours[name].mul_(decay).add_(value, alpha=1.0 - decay)
                else:
                    ours[name].copy_(value)


def dice_bce_loss(logits, target, weight):
    """Soft Dice over the whole batch + BCE, both over the voxels with weight > 0 (the liver); a
    batch without tumor still pays for false positives through the Dice denominator."""
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    dims = tuple(range(logits.dim()))
    dice = 1.0 - (2.0 * (prob * t).sum(dims) + 1.0) / (prob.sum(dims) + t.sum(dims) + 1.0)
    return bce + dice.mean()


class Run:
    """A training state that can be continued or forked: network, Adam, EMA, the patch rng, the
    steps done (the warm-up and the EMA's warm start count from 0 of the whole run) and the
    smoothed loss."""

    def __init__(self, network, lr: float, ema_decay: float, rng):
        import torch

        self.network, self.lr, self.rng = network, lr, rng
        self.optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        self.ema = EMA(network, ema_decay)
        self.step, self.smoothed = 0, None

    @property
    def loss(self) -> float | None:
        """The smoothed training loss, rounded for model.json (None before the first step)."""
        return None if self.smoothed is None else round(self.smoothed, 4)

    def fork(self, rng) -> "Run":
        """An independent copy (network, optimiser state, EMA) that draws patches from `rng`."""
        import torch

        other = copy.copy(self)
        other.network = copy.deepcopy(self.network)
        other.optimizer = torch.optim.Adam(other.network.parameters(), lr=self.lr)
        other.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        other.ema = copy.deepcopy(self.ema)
        other.rng = rng
        return other

    def train(self, samplers, settings, n_steps: int, deadline: float, clock: Clock, local_ema: EMA | None = None,
              first_step_always: bool = False, report_eta: bool = False) -> int:
        """Up to n_steps steps on batches from `samplers`, never starting one after `deadline`
        (time.perf_counter; first_step_always: the first step regardless). local_ema: a second
        average of these steps only. report_eta: progress totals estimated from the pace so far
        (else settings.max_steps). Returns the steps done."""
        import torch

        self.network.train()
        done = 0
        loop_start = time.perf_counter()
        while done < n_steps and ((first_step_always and done == 0) or time.perf_counter() < deadline):
            clock.check()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (self.step + 1) / max(1, settings.warmup_steps))
            x, target, weight = (torch.from_numpy(a) for a in draw_batch(samplers, settings.batch_size, settings.patches, self.rng))
            loss = dice_bce_loss(self.network(x), target, weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.ema.update(self.network, self.step)
            if local_ema is not None:
                local_ema.update(self.network, done)
            self.step += 1
            done += 1
            value = float(loss.detach())
            self.smoothed = value if self.smoothed is None else 0.9 * self.smoothed + 0.1 * value
            if report_eta:
                per_step = (time.perf_counter() - loop_start) / done
                total = int(min(settings.max_steps, self.step + max(0.0, deadline - time.perf_counter()) / per_step))
                clock.report("train", self.step, max(total, self.step), eta_s=(total - self.step) * per_step, loss=self.loss)
            else:
                clock.report("train", self.step, settings.max_steps, loss=self.loss)
        return done


def fit(network, samplers, settings, lr: float, rng, deadline: float, clock: Clock):
    """A whole training of `network` (trained in place): settings.max_steps steps, or fewer when
    `deadline` comes first (at least one). Returns (EMA network, steps done, smoothed loss)."""
    run = Run(network, lr, settings.ema_decay, rng)
    run.train(samplers, settings, settings.max_steps, deadline, clock, first_step_always=True, report_eta=True)
    return run.ema.network, run.step, run.loss
