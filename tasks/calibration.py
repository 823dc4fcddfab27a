"""Each head of the kept model recalibrated on the validation rows, from sums alone.

A head's output z (a logit, or a rating in standard units) becomes a z + b, with (a, b) one Newton
step from (1, 0) on the validation loss: Platt scaling for a binary head, a linear fit for a rating
(exact in one step). Every node sends, with its validation metrics, the means over its labelled rows
of the loss's gradient and curvature in (a, b) (`calibration_moments`); the label-weighted mean the
server already takes over merchants is then the pooled one, so no row leaves a node. A logit's step
can overshoot where the head is far off (over-confident heads have little curvature), so the kept
model, recalibrated, is scored on validation again and stepped again until the step is negligible
(`refined`: Newton's method on the pooled validation loss, one validation pass per step). The validation
rows are each merchant's latest before its test window, so the fit follows the drift of a base rate
or a rating level since training (synthetic_sparse's ratings: test RMSE 0.8957 -> 0.8845, offline on
its seed-0 run), and it shrinks a head that validation finds over-confident (a < 1). One step from
(1, 0) reached within 0.0003 of the full Platt fit's test log-loss on every run tried (README).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from tasks.metrics import Metrics
from tasks.registry import Task
from tasks.selection import MIN_LABELS_TO_FALL_BACK, judged_labels

MOMENTS = ("cal_g_a", "cal_g_b", "cal_h_aa", "cal_h_ab", "cal_h_bb")


def head_output(task: Task, prediction: np.ndarray) -> np.ndarray:
    """The head's output from its prediction in label space: a logit, or a value in standard units."""
    if task.kind == "binary":
        p = np.clip(prediction.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)
    return (prediction.astype(np.float64) - task.center) / task.scale


def calibration_moments(task: Task, y: np.ndarray, prediction: np.ndarray) -> Metrics:
    """Means over labelled rows of the gradient (g) and curvature (h) in (a, b) of the loss of
    a z + b at (1, 0): log-loss for a binary head, half the squared error in standard units for a rating."""
    z = head_output(task, prediction)
    if task.kind == "binary":
        p = 1.0 / (1.0 + np.exp(-z))
        residual, weight = p - y, p * (1.0 - p)
    else:
        residual, weight = z - (y - task.center) / task.scale, np.ones_like(z)
    values = (residual * z, residual, weight * z * z, weight * z, weight)
    return {name: float(np.mean(v)) for name, v in zip(MOMENTS, values)}


def calibration_step(moments: Mapping[str, float]) -> tuple[float, float] | None:
    """(a, b) after one Newton step from (1, 0); None where the moments are missing or the head's
    output hardly varies (a constant head: its prior)."""
    if not all(math.isfinite(moments.get(name, math.nan)) for name in MOMENTS):
        return None
    g_a, g_b, h_aa, h_ab, h_bb = (moments[name] for name in MOMENTS)
    det = h_aa * h_bb - h_ab * h_ab
    if h_aa <= 0 or h_bb <= 0 or det <= 1e-6 * h_aa * h_bb:
        return None
    d_a = -(h_bb * g_a - h_ab * g_b) / det
    d_b = -(h_aa * g_b - h_ab * g_a) / det
    return 1.0 + d_a, d_b


STEPS = 10         # validation passes at most: Newton's method on two parameters converges in a few (2-3 measured)
TOLERANCE = 1e-3   # a step smaller than this in a and b ends it


def damped(a: float, b: float, step: tuple[float, float]) -> tuple[float, float]:
    """(a, b) after the step (da, db) taken on a z + b, halved until the slope keeps at least half its
    value: a head's ranking is never reversed, and an overshoot is left for the next step to mend."""
    d_a, d_b = step[0] - 1.0, step[1]
    while (1.0 + d_a) < 0.5:
        d_a, d_b = d_a / 2, d_b / 2
    return a * (1.0 + d_a), b * (1.0 + d_a) + d_b


def fit_calibration(validation: Mapping[str, Metrics], tasks: Sequence[Task],
                    measure: Callable[[dict[str, tuple[float, float]]], Mapping[str, Metrics]],
                    skip: Sequence[str] = ()) -> dict[str, tuple[float, float]]:
    """Task -> (a, b) minimising its pooled validation loss, by Newton's method on the nodes' moments:
    `validation` holds the kept model's (the first step's), `measure(recalibrations)` the validation
    metrics of the kept model so recalibrated (one validation pass). Only heads with enough labels
    (the fallback's rule, tasks/selection.py) and a varying output; `skip`: heads left as they are."""
    current = {t.name: (1.0, 0.0) for t in tasks
               if t.name not in skip and judged_labels(t, validation.get(t.name, {})) >= MIN_LABELS_TO_FALL_BACK}
    for number in range(STEPS):
        if not current:
            break
        if number:
            validation = measure(current)
        moving = False
        for name, (a, b) in list(current.items()):
            step = calibration_step(validation.get(name, {}))
            if step is None:  # a constant output, or no moments: nothing to fit
                del current[name]
                continue
            current[name] = damped(a, b, step)
            moving |= abs(step[0] - 1) > TOLERANCE or abs(step[1]) > TOLERANCE
        if not moving:
            break
    return current
