"""Fréchet and kernel distances between two feature sets (N, D), in float64.

FVD (DIGAN = VideoGPT = TF-GAN's formula):
    d² = |μa − μb|² + tr Σa + tr Σb − 2 tr sqrt(Σa^½ Σb Σa^½)
with unbiased covariances (1/(N − 1)).  The trace of the square root is taken from the
eigenvalues of the *symmetric* product Σa^½ Σb Σa^½ (eigh; tiny negative eigenvalues from
rounding clipped to 0), never from a general sqrtm, whose complex/negative results made other
implementations report negative FVDs with scipy >= 1.9.  The result is clipped at 0 (it is a
squared distance; for equal sets the rounding residue is ~1e-12 of the traces).

KVD (DIGAN's `polynomial_mmd`): unbiased MMD² with sklearn's polynomial kernel
    k(x, y) = (γ x·y + c0)^3,  γ = 1/D, c0 = 1
    MMD² = Σ_{i≠j} k(a_i, a_j)/(m(m−1)) + Σ_{i≠j} k(b_i, b_j)/(n(n−1)) − 2 Σ k(a_i, b_j)/(mn).
It is unbiased, so it may be slightly negative for sets from the same distribution (as the
official one); it is reported as is.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def _features(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch tensor (N, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite features (NaN or inf)")
    return x


def _pair(a, b, min_n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: a has D = {a.shape[1]}, b has D = {b.shape[1]}")
    for name, x in (("a", a), ("b", b)):
        if x.shape[0] < min_n:
            raise ValueError(f"{name} needs at least {min_n} feature rows, got {x.shape[0]}")
    return a, b


def mean_cov(x) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,), unbiased covariance (D, D), both float64."""
    x = _features(x, "x")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 rows, got {x.shape[0]}")
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix from its eigen-decomposition (negative rounding -> 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """tr sqrt(Σa Σb) = Σ sqrt(eig(Σa^½ Σb Σa^½)), the product symmetric so eigh applies."""
    root = _psd_sqrt(sigma_a)
    prod = root @ sigma_b @ root
    vals = torch.linalg.eigvalsh((prod + prod.T) / 2)
    return float(vals.clamp(min=0).sqrt().sum())


def frechet_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    mu_a, mu_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_a, mu_b))
    sigma_a, sigma_b = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma_a, sigma_b))
    mean_term = float(((mu_a - mu_b) ** 2).sum())
    trace_term = float(torch.trace(sigma_a) + torch.trace(sigma_b)) - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    return max(mean_term + trace_term, 0.0)


def frechet_distance(a, b) -> float:
    """Fréchet distance between features a (N, D) and b (M, D) (numpy or torch), as a float."""
    a, b = _pair(a, b, min_n=2)
    return frechet_from_stats(*mean_cov(a), *mean_cov(b))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma=None, coef0: float = 1.0):
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def kernel_distance(a, b) -> float:
    """Unbiased polynomial MMD² (degree 3, γ = 1/D, c0 = 1) between a (m, D) and b (n, D), as DIGAN's KVD."""
    a, b = _pair(a, b, min_n=2)
    m, n = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    s_aa = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    s_bb = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(s_aa + s_bb - 2.0 * k_ab.sum() / (m * n))
