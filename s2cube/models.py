"""Internal learning for seq2seq cloud removal: a small network fitted to one series at a time.

The approach the dataset was built for (Ebel et al., "Internal Learning for Sequence-to-
Sequence Cloud Removal via Synthetic Aperture Radar Prior Information", IGARSS 2021; Deep
Image Prior, Ulyanov et al., CVPR 2018): no training set. For each series a fresh network
maps the **SAR series** (the prior: Sentinel-1 sees through clouds), the frames' times and a
fixed random code per pixel to the optical series, and is fitted to the **cloudy optical
series on its observed pixels only** (valid frame, clear for the plan's detector, not under
a synthetic gap). What the network gives under the clouds and gaps is the reconstruction.
The network's structure is the only prior; stopping early keeps it from fitting noise.

- :class:`FitOptions`: the network's size, the optimiser and the **stopping schedule**
  (``max_steps``; every ``check_every`` steps the loss on ``holdout``, a seeded share of the
  observed pixels kept out of the fit, is measured; the fit stops after ``patience`` checks
  without improvement, not before ``min_steps``, and returns the reconstruction of the best
  check), the device, and the seed of every random draw (weights, code, holdout, crops);
- :func:`fit_series`: one series — from a Dataset and a series plan (read through the cube's
  read path, local or S3, checksums verified; the time spent reading is reported) or from
  :class:`~s2cube.analysis.series.SeriesFrames` — fitted and reconstructed;
- :func:`fit_plan`: every series of a plan in turn, each scored by
  :func:`s2cube.analysis.series.evaluate_series` as soon as it is fitted.

Same code on CPU and CUDA (``device=None`` takes CUDA where present); on CPU a 64² series
of 30 frames fits in tens of seconds (``benchmarks/bench_seq2seq.py``). Training runs on
random ``train_crop`` windows of the series (fully convolutional: the reconstruction is
made on the whole patch). Needs PyTorch (the ``torch`` extra); nothing else in s2cube
imports this module.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from s2cube.analysis.series import (
    SERIES_METHODS,
    SeriesEvaluation,
    SeriesFrames,
    evaluate_series,
    fill_series,
    series_frames,
)

logger = logging.getLogger(__name__)

__all__ = ["FitOptions", "FitResult", "PlanFit", "SeriesNet", "fit_plan", "fit_series"]


@dataclass(frozen=True)
class FitOptions:
    """How one series is fitted.

    Parameters
    ----------
    max_steps
        Optimiser steps at most.
    check_every, patience, min_steps
        The stopping schedule: every ``check_every`` steps the loss on the held-out pixels is
        measured; the fit stops when ``patience`` checks in a row did not improve on the best
        one (never before ``min_steps``), and the reconstruction of the best check is kept.
    holdout
        Share of the observed pixels (drawn from ``seed``) kept out of the fit to measure the
        stopping loss. ``0`` fits every observed pixel and stops at ``max_steps``.
    lr
        Adam's learning rate.
    width
        Channels of the network's layers.
    code_channels
        Channels of the fixed random code per pixel (the Deep-Image-Prior input).
    train_crop
        Side of the random window each step is fitted on (None: the whole patch).
    s1
        Feed the SAR series (VV, VH; the reference's default scaling ``(clip(dB, -25, 0) +
        25) / 25``, NaN as 0 with a presence channel). False: code and time only.
    base
        A series baseline (``"median"``, ``"linear"``, ``"nearest"``) the network starts from
        and corrects: it is an input of the network and its output is ``base + network``,
        with the last layer starting at zero, so the fit starts at the baseline and the
        stopping schedule (which checks before the first step too) never keeps anything
        worse on the held-out pixels. The baseline is made from the fitted pixels only (the
        held-out ones are hidden from it too). None: the network alone, starting from each
        band's mean (a pure Deep Image Prior).
    seed
        Seed of every random draw: the weights, the code, the holdout and the crops.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; None takes CUDA where present, else the CPU.
    """

    max_steps: int = 400
    check_every: int = 20
    patience: int = 5
    min_steps: int = 60
    holdout: float = 0.05
    lr: float = 3e-3
    width: int = 16
    code_channels: int = 8
    train_crop: int | None = 64
    s1: bool = True
    base: str | None = "median"
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.base is not None and self.base not in SERIES_METHODS:
            raise ValueError(f"base={self.base!r} is not one of {SERIES_METHODS} or None")
        if self.max_steps < 1 or self.check_every < 1 or self.patience < 1:
            raise ValueError("max_steps, check_every and patience must be at least 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout={self.holdout} must be in [0, 1)")
        if self.train_crop is not None and self.train_crop < 8:
            raise ValueError(f"train_crop={self.train_crop} must be at least 8 (or None)")


@dataclass
class FitResult:
    """One fitted series: the reconstruction ``(T, band, P, P)`` float32 in [0, 1] and how.

    ``losses``: the fitted loss per step; ``checks``: ``(step, held-out loss)`` per check;
    ``best_step``: the step whose reconstruction is kept; ``read_seconds`` the time spent
    reading the series from the cube (0 when given arrays), ``fit_seconds`` the rest.
    """

    prediction: np.ndarray
    losses: list[float]
    checks: list[tuple[int, float]]
    best_step: int
    steps: int
    read_seconds: float
    fit_seconds: float
    device: str
    window: tuple[int, int, int] = (0, 0, 0)  # (y0, x0, side) of the reconstruction in the patch


# --- the network ---------------------------------------------------------------------------------

class SeriesNet(nn.Module):
    """A small (2+1)-D U-Net over a series ``(T, C, H, W)`` → ``(T, bands, H, W)``.

    Spatial 3×3 convolutions per frame (time as the batch) and temporal convolutions over 3
    neighbouring frames per pixel (a 3×1 kernel over ``(time, pixel)``): one stride-2 level
    of two spatial + temporal pairs, a skip connection, and a temporal mix at full
    resolution. Every layer is a 2-D convolution, the fast path of PyTorch on CPU and GPU.
    No normalisation layer, so a window and the whole patch go through the same function.
    """

    def __init__(self, in_channels: int, bands: int, width: int = 16) -> None:
        super().__init__()
        w = int(width)
        self.enc1 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.enc2 = nn.Conv2d(w, w, 3, stride=2, padding=1)
        self.mid_s1 = nn.Conv2d(w, w, 3, padding=1)
        self.mid_t1 = nn.Conv2d(w, w, (3, 1), padding=(1, 0))
        self.mid_s2 = nn.Conv2d(w, w, 3, padding=1)
        self.mid_t2 = nn.Conv2d(w, w, (3, 1), padding=(1, 0))
        self.dec = nn.Conv2d(2 * w, w, 3, padding=1)
        self.tmix = nn.Conv2d(w, w, (3, 1), padding=(1, 0))
        self.out = nn.Conv2d(w, bands, 1)
        self.act = nn.LeakyReLU(0.2)

    @staticmethod
    def _temporal(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``conv`` (a 3×1 kernel) along time at every pixel of ``x`` ``(T, C, H, W)``."""
        t, c, h, w = x.shape
        y = conv(x.permute(1, 0, 2, 3).reshape(1, c, t, h * w))
        return y.reshape(-1, t, h, w).permute(1, 0, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.act(self.enc1(x))
        m = self.act(self.enc2(e1))
        m = self.act(self._temporal(self.mid_t1, self.act(self.mid_s1(m))))
        m = self.act(self._temporal(self.mid_t2, self.act(self.mid_s2(m))))
        u = F.interpolate(m, size=e1.shape[-2:], mode="nearest")
        d = self.act(self.dec(torch.cat([u, e1], dim=1)))
        d = d + self.act(self._temporal(self.tmix, d))
        return self.out(d)


# --- one series ----------------------------------------------------------------------------------

def _device(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _window(size: int, crop: Any) -> tuple[int, int, int]:
    """``(y0, x0, side)`` of the reconstructed window: the whole patch, a centre crop, or given."""
    if crop is None:
        return 0, 0, size
    if isinstance(crop, int | np.integer):
        side = int(crop)
        if not 8 <= side <= size:
            raise ValueError(f"crop={side} must be between 8 and the patch size {size}")
        return (size - side) // 2, (size - side) // 2, side
    y0, x0, side = (int(v) for v in crop)
    if not (0 <= y0 and 0 <= x0 and 8 <= side and y0 + side <= size and x0 + side <= size):
        raise ValueError(f"crop={crop} must be (y0, x0, side) inside the {size}² patch")
    return y0, x0, side


def _inputs(frames: SeriesFrames, win: tuple[int, int, int], opts: FitOptions,
            gen: torch.Generator, base: np.ndarray | None) -> torch.Tensor:
    """The network's input ``(T, C, h, w)`` float32: code, time, the SAR series, the base."""
    y0, x0, side = win
    t = frames.s2.shape[0]
    days = np.asarray(frames.days, np.float64)
    span = float(days.max() - days.min()) or 1.0
    tnorm = torch.from_numpy(((days - days.min()) / span * 2.0 - 1.0).astype(np.float32))
    parts = [torch.rand((1, opts.code_channels, side, side), generator=gen).mul_(0.1)
             .expand(t, -1, -1, -1),
             tnorm.view(t, 1, 1, 1).expand(t, 1, side, side)]
    if opts.s1:
        if frames.s1 is None:
            raise ValueError("FitOptions(s1=True) needs the SAR series: read it with s1=True "
                             "(fit_series does when given a Dataset)")
        s1 = np.asarray(frames.s1[:, :, y0:y0 + side, x0:x0 + side], np.float32)
        present = ~np.isnan(s1).any(axis=1, keepdims=True)
        if frames.valid_s1 is not None:
            present &= np.asarray(frames.valid_s1, bool)[:, None, None, None]
        scaled = (np.clip(np.nan_to_num(s1, nan=-25.0), -25.0, 0.0) + 25.0) / 25.0
        scaled = np.where(present, scaled, 0.0).astype(np.float32)
        parts += [torch.from_numpy(scaled), torch.from_numpy(present.astype(np.float32))]
    if base is not None:
        parts.append(torch.from_numpy(base))
    return torch.cat(parts, dim=1).contiguous()


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the bands and the pixels of ``mask`` ``(T, 1, h, w)``."""
    n = mask.sum() * pred.shape[1]
    return ((pred - target).square() * mask).sum() / n.clamp_min(1.0)


def fit_series(
    series: xr.Dataset | SeriesFrames,
    plan: Any = None,
    k: int = 0,
    *,
    options: FitOptions | None = None,
    crop: int | tuple[int, int, int] | None = None,
    **overrides: Any,
) -> FitResult:
    """Fit a fresh network to one series and return its reconstruction.

    Parameters
    ----------
    series
        A Dataset of :func:`s2cube.open_cube` (local or S3) with ``plan`` and ``k``: the
        series at row position ``k`` of the series plan is read from the cube (its S2 and S1
        frames, masks and donor masks, checksums verified); or the arrays of one series
        (:class:`~s2cube.analysis.series.SeriesFrames`, e.g. built by hand for tests).
    options, overrides
        :class:`FitOptions`; keyword overrides of its fields (``max_steps=200``…).
    crop
        Reconstruct only a window of the patch: a side (the centre window) or ``(y0, x0,
        side)``; None: the whole patch.

    Returns
    -------
    FitResult
        ``prediction`` ``(T, band, side, side)`` float32 reflectance clipped to [0, 1].
    """
    opts = replace(options or FitOptions(), **overrides)
    started = time.perf_counter()
    if isinstance(series, xr.Dataset):
        if plan is None:
            raise ValueError("fit_series(ds, plan, k): a Dataset needs the series plan")
        frames = series_frames(series, plan, int(k), s1=opts.s1)
    elif isinstance(series, SeriesFrames):
        frames = series
    else:
        raise TypeError(f"expected a Dataset (with a plan) or SeriesFrames, got {type(series)}")
    read_seconds = time.perf_counter() - started if isinstance(series, xr.Dataset) else 0.0
    began = time.perf_counter()
    device = _device(opts.device)
    t, bands, size = frames.s2.shape[0], frames.s2.shape[1], frames.s2.shape[-1]
    win = _window(size, crop)
    y0, x0, side = win
    inside = (slice(None), slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
    rng = np.random.default_rng([int(opts.seed), 1])
    gen = torch.Generator().manual_seed(int(opts.seed))
    observed = frames.observed
    held = (rng.random(observed.shape) < opts.holdout) & observed if opts.holdout > 0 else \
        np.zeros_like(observed)
    fitted = observed & ~held
    base = None
    if opts.base is not None:  # the baseline of the fitted pixels only: the held-out are hidden
        hidden = replace(frames, gap=frames.gap | held)
        base = np.ascontiguousarray(fill_series(hidden, opts.base)[inside], np.float32)
    x = _inputs(frames, win, opts, gen, base)
    target = torch.from_numpy(np.ascontiguousarray(frames.s2[inside], np.float32))
    fit_mask = torch.from_numpy(np.ascontiguousarray(fitted[:, None][inside], np.float32))
    val_mask = torch.from_numpy(np.ascontiguousarray(held[:, None][inside], np.float32))
    has_holdout = bool(val_mask.any())
    if opts.holdout > 0 and not has_holdout:
        logger.info("the holdout drew no pixel: the fit runs to max_steps")
    with torch.random.fork_rng(devices=[]):  # the weights from the seed, the global RNG untouched
        torch.manual_seed(int(opts.seed))
        net = SeriesNet(x.shape[1], bands, opts.width)
    with torch.no_grad():
        bias = net.out.bias
        assert bias is not None  # SeriesNet's output convolution has a bias
        if base is None:  # start from each band's observed mean
            bias.copy_(torch.from_numpy(_band_means(frames.s2, fitted)))
        else:  # start from the base: the network's correction starts at zero
            net.out.weight.zero_()
            bias.zero_()
    net = net.to(device)
    x, target, fit_mask, val_mask = (a.to(device) for a in (x, target, fit_mask, val_mask))
    start = None if base is None else torch.from_numpy(base).to(device)

    def run(inputs: torch.Tensor, sl: tuple) -> torch.Tensor:
        out = net(inputs[sl])
        return out if start is None else out + start[sl]

    optimiser = torch.optim.Adam(net.parameters(), lr=opts.lr)
    crop_side = side if opts.train_crop is None else min(int(opts.train_crop), side)
    whole = (slice(None),) * 4
    losses: list[float] = []
    checks: list[tuple[int, float]] = []
    best: tuple[float, int, np.ndarray | None] = (math.inf, 0, None)
    since_best = 0

    def check(step: int) -> None:
        nonlocal best, since_best
        with torch.no_grad():
            out = run(x, whole)
            score = float(_masked_mse(out, target, val_mask)) if has_holdout else -float(step)
        checks.append((step, score if has_holdout else float("nan")))
        if score < best[0]:
            best = (score, step, out.clamp_(0.0, 1.0).cpu().numpy())
            since_best = 0
        else:
            since_best += 1

    if base is not None:
        check(0)  # the base itself
    step = 0
    for step in range(1, opts.max_steps + 1):
        if crop_side < side:
            cy, cx = (int(v) for v in rng.integers(0, side - crop_side + 1, 2))
            sl = (slice(None), slice(None), slice(cy, cy + crop_side), slice(cx, cx + crop_side))
        else:
            sl = whole
        optimiser.zero_grad(set_to_none=True)
        loss = _masked_mse(run(x, sl), target[sl], fit_mask[sl])
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the fit diverged at step {step} (loss {losses[-1]}); "
                                     "lower lr")
        if step % opts.check_every and step != opts.max_steps:
            continue
        check(step)
        if has_holdout and step >= opts.min_steps and since_best >= opts.patience:
            break
    fit_seconds = time.perf_counter() - began
    logger.info("fitted a %d-frame %d² series on %s: %d steps (best %d), %.1f s reading, "
                "%.1f s fitting", t, side, device, step, best[1], read_seconds, fit_seconds)
    prediction = best[2]
    if prediction is None:  # every check's held-out loss was NaN
        raise FloatingPointError(f"the fit's loss on the held-out pixels was never finite "
                                 f"({len(checks)} checks over {step} steps); lower lr")
    return FitResult(prediction=prediction.astype(np.float32), losses=losses, checks=checks,
                     best_step=best[1], steps=step, read_seconds=read_seconds,
                     fit_seconds=fit_seconds, device=str(device), window=win)


def _band_means(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per band, the mean of the observed values (0.5 where nothing is observed)."""
    w = observed[:, None].astype(np.float64)
    n = w.sum() or 0.0
    if n == 0:
        return np.full(x.shape[1], 0.5, np.float32)
    return ((x * w).sum(axis=(0, 2, 3)) / n).astype(np.float32)


# --- a plan ---------------------------------------------------------------------------------------

@dataclass
class PlanFit:
    """Every series of a plan fitted and scored.

    ``evaluation``: the series evaluation of the reconstructions (the same table as
    :func:`~s2cube.analysis.series.evaluate_series` gives for the baselines); ``fits``: one row
    per series (steps, best step, seconds reading and fitting, device); ``predictions``: the
    reconstructions ``(T, band, P, P)`` per series when asked for (``keep=True``);
    ``losses``: per series, the fitted loss per step and the held-out ``(step, loss)`` checks.
    """

    evaluation: SeriesEvaluation
    fits: pd.DataFrame
    options: FitOptions
    predictions: list[np.ndarray] = field(default_factory=list)
    losses: list[tuple[list[float], list[tuple[int, float]]]] = field(default_factory=list)


def fit_plan(ds: xr.Dataset, plan: Any, *, options: FitOptions | None = None, keep: bool = False,
             **overrides: Any) -> PlanFit:
    """Fit every series of a series plan in turn and score each with ``evaluate_series``.

    One network per series, fitted on the whole patch (see :func:`fit_series`); the series is
    read from ``ds``'s cube (local or S3). ``keep`` keeps the reconstructions (a 256² series of
    13 bands and 30 frames is 100 MB).

    Raises
    ------
    PlanError
        The plan names what ``ds`` does not hold.
    """
    from s2cube.plans.series import as_series_table, resolve_series

    opts = replace(options or FitOptions(), **overrides)
    table = as_series_table(plan, ds)
    resolve_series(ds, table)  # refuse a plan the Dataset cannot serve before fitting anything
    frames, fits, kept, losses = [], [], [], []
    for k in range(len(table)):
        result = fit_series(ds, table, k, options=opts)
        one = table.iloc[[k]]
        scored = evaluate_series(ds, result.prediction[None], one).frames
        frames.append(scored)
        fits.append({"sdx": table.index[k], "roi": one["roi"].iloc[0],
                     "row": int(one["row"].iloc[0]), "col": int(one["col"].iloc[0]),
                     "steps": result.steps, "best_step": result.best_step,
                     "read_seconds": result.read_seconds, "fit_seconds": result.fit_seconds,
                     "device": result.device})
        if keep:
            kept.append(result.prediction)
        losses.append((result.losses, result.checks))
        logger.info("series %d/%d fitted and scored", k + 1, len(table))
    evaluation = SeriesEvaluation(pd.concat(frames, ignore_index=True) if frames
                                  else pd.DataFrame())
    return PlanFit(evaluation, pd.DataFrame(fits).set_index("sdx") if fits else pd.DataFrame(),
                   opts, kept, losses)


def options_dict(options: FitOptions) -> dict[str, Any]:
    """The options as a plain dict (to record with published results)."""
    return asdict(options)
