"""Probability calibration: temperature scaling and expected calibration error (ECE).

Temperature scaling (Guo et al., ICML 2017) divides a head's logits by one scalar T > 0 fitted to
minimise the negative log-likelihood of held-out labels; it never changes the arg-max, only how
confident the probabilities are. Temperature with class biases (``fit_temperature_bias``: ``logits / T +
b``, ``b[0] = 0``) may move the arg-max: it re-weights the classes, as when training sampled some grades
more often than they occur. ECE is the top-label form: predictions binned by their confidence
(``bins`` equal-width bins on [0, 1]), ``sum_b |B|/n * |accuracy(B) - mean confidence(B)|``.

ECE is biased upwards on few images: even a perfectly calibrated grader shows a positive ECE, because each
bin's accuracy is a sample. ``ece_if_calibrated`` measures that floor by consistency resampling (Broecker
and Smith, 2007): outcomes drawn from the grader's own confidences, as a calibrated grader's would be,
give the ECE such a grader shows on these images; the share of draws at or above the observed ECE says
whether the observed miscalibration is more than sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Reliability",
    "binned_reliability",
    "ece_if_calibrated",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_bias",
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


def fit_temperature_bias(
    logits: np.ndarray, labels: np.ndarray, steps: int = 200
) -> tuple[float, np.ndarray]:
    """``(T, b)`` minimising the NLL of ``softmax(logits / T + b)``, ``b`` one bias per class, ``b[0] = 0``.

    The NLL is convex in ``(1/T, b)`` (a multinomial logistic regression on fixed features), so damped
    Newton steps find the optimum; they start from temperature alone (``fit_temperature``, ``b = 0``),
    which also keeps saturated logits in range.

    Raises:
        ValueError: a class absent from ``labels`` (its bias would run to minus infinity), logits that rank
            the classes backwards (the optimum has ``1/T <= 0``), or no convergence in ``steps``.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(labels, int)
    n, k = z.shape
    if n == 0 or np.bincount(y, minlength=k).min() == 0:
        raise ValueError(f"fit_temperature_bias needs every one of {k} classes among the labels")
    onehot = np.eye(k)[y]
    # scores = z * theta[0] + basis @ theta[1:]: the Jacobian of each row's scores in theta is [z_i | basis]
    basis = np.eye(k)[:, 1:]
    jac = np.concatenate([z[:, :, None], np.broadcast_to(basis, (n, k, k - 1))], axis=2)  # n, k, k

    def probabilities(theta: np.ndarray) -> np.ndarray:
        scores = z * theta[0] + basis @ theta[1:]
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def nll(theta: np.ndarray) -> float:
        return float(-np.log(np.clip(probabilities(theta)[np.arange(n), y], 1e-300, None)).mean())

    theta = np.zeros(k)
    theta[0] = 1.0 / fit_temperature(z, y, low=1e-4, high=1e4)
    for _ in range(steps):
        probs = probabilities(theta)
        grad = np.einsum("nk,nkp->p", probs - onehot, jac) / n
        curvature = probs[:, :, None] * np.eye(k) - probs[:, :, None] * probs[:, None, :]
        hessian = np.einsum("nkp,nkl,nlq->pq", jac, curvature, jac) / n
        step = np.linalg.lstsq(hessian, grad, rcond=None)[0]  # a flat direction gets no step, not an error
        size, before = 1.0, nll(theta)
        while nll(theta - size * step) > before and size > 1e-8:
            size /= 2
        if nll(theta - size * step) > before:  # no descent left at double precision: at the optimum
            break
        theta = theta - size * step
        if np.abs(size * step).max() < 1e-12:
            break
    gradient = np.einsum("nk,nkp->p", probabilities(theta) - onehot, jac) / n
    scale = max(1.0, float(np.abs(z).mean()))
    if np.abs(gradient).max() > 1e-6 * scale:
        raise ValueError(f"fit_temperature_bias did not converge (gradient {np.abs(gradient).max():.2g})")
    if theta[0] <= 0:
        raise ValueError("fit_temperature_bias: the logits rank the classes backwards (1/T <= 0)")
    return float(1.0 / theta[0]), np.concatenate([[0.0], theta[1:]])


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


def ece_if_calibrated(
    probs: np.ndarray, labels: np.ndarray, bins: int = 10, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """The top-label ECE a perfectly calibrated grader with these confidences would show on this many
    images (consistency resampling: each draw marks a prediction correct with probability equal to its
    confidence), beside the observed ECE.

    Returns ``observed``, the ``median`` and ``p95`` of the calibrated grader's ECE, and ``p_value``: the
    share of draws whose ECE is at least the observed one (small: more miscalibration than sampling gives).
    """
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    if len(labels) == 0:
        raise ValueError("ece_if_calibrated needs at least one labelled example")
    confidence = probs.max(axis=1)
    observed = expected_calibration_error(probs, labels, bins)
    rng = np.random.default_rng(seed)
    floor = np.array(
        [
            binned_reliability(confidence, rng.random(len(confidence)) < confidence, bins).ece
            for _ in range(draws)
        ]
    )
    return {
        "observed": observed,
        "median": float(np.median(floor)),
        "p95": float(np.percentile(floor, 95)),
        "p_value": float(np.mean(floor >= observed - 1e-12)),
        "draws": draws,
    }
