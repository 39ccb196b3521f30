"""Probability calibration: temperature scaling and expected calibration error (ECE).

Temperature scaling (Guo et al., ICML 2017) divides a head's logits by one scalar T > 0 fitted to
minimise the negative log-likelihood of held-out labels; it never changes the arg-max, only how
confident the probabilities are. ECE is the top-label form: predictions binned by their confidence
(``bins`` equal-width bins on [0, 1]), ``sum_b |B|/n * |accuracy(B) - mean confidence(B)|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Reliability",
    "binned_reliability",
    "expected_calibration_error",
    "fit_temperature",
    "reliability",
    "softmax",
]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = softmax(logits, temperature)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T in [low, high] minimising the NLL of ``softmax(logits / T)`` (golden-section on log T).

    The NLL is convex in 1/T, hence unimodal in log T, so the section search finds the optimum.
    """
    labels = np.asarray(labels, int)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labelled example")
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, labels, np.exp(c)), _nll(logits, labels, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


@dataclass(frozen=True)
class Reliability:
    """Per-bin counts, mean confidence and accuracy (NaN in empty bins), and the ECE they give."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> Reliability:
    """Top-label reliability diagram data for (N, K) probabilities and (N,) integer labels."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    return binned_reliability(probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float), bins)


def binned_reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = 10) -> Reliability:
    """Reliability of any probability: per bin, its mean and the observed rate of ``outcome`` (0/1).

    ``accuracy`` holds the observed rate (the share correct for top-label use, the share positive for a
    binary probability such as referable DR).
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(outcome, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds confidences in (edges[b], edges[b + 1]]; a confidence of exactly 0 goes to bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        mean_acc = np.bincount(index, weights=correct, minlength=bins) / counts
    n = max(len(correct), 1)
    filled = counts > 0
    ece = float(np.sum(counts[filled] / n * np.abs(mean_acc[filled] - mean_conf[filled])))
    return Reliability(edges, counts, mean_conf, mean_acc, ece)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE (see module docstring); 0 is perfectly calibrated."""
    if len(np.asarray(labels)) == 0:
        return float("nan")
    return reliability(probs, labels, bins).ece
