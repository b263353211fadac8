"""Metrics comparing two sets of latent samples (e.g. encoded MD and generated).

- :func:`kl_divergence_2d`: the LaTF/D-SPIB papers' metric, KL(P‖Q) = Σ P log((P+ε)/(Q+ε))
  on a 100 × 100 histogram over the common range of both sets, ε = 1e-10. It is
  asymmetric and harsh on sparse tails: a bin populated only in P costs P·log(P/ε).
  Two independent halves of one 200 000-frame three-hole data set already give ≈ 0.1–0.2.
- :func:`js_divergence_2d`: Jensen–Shannon divergence on the same histogram (symmetric,
  bounded by ln 2, no ε needed).
- :func:`free_energy_profile_rmse`: RMSE between 1-D free-energy profiles −ln p (in k_BT)
  along one CV, over bins populated in both, after removing the best constant offset.
- :func:`free_energy_profile_change`: how much a weighted 1-D profile moved when data were
  added, weighted by the new probability; regions only the new data reached count as a
  large change (the loop's convergence check), where the RMSE above would skip them.
"""

from __future__ import annotations

import numpy as np

from latf_openmm.errors import LatfError


def _histograms(p: np.ndarray, q: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != 2 or q.shape[1] != 2 or not len(p) or not len(q):
        raise LatfError(f"2-D histogram metrics need two (n, 2) sample sets, got {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise LatfError("samples contain NaN or inf")
    low, high = np.minimum(p.min(0), q.min(0)), np.maximum(p.max(0), q.max(0))
    ranges = [[low[0], high[0]], [low[1], high[1]]]
    hp = np.histogram2d(p[:, 0], p[:, 1], bins=bins, range=ranges)[0]
    hq = np.histogram2d(q[:, 0], q[:, 1], bins=bins, range=ranges)[0]
    return hp / hp.sum(), hq / hq.sum()


def kl_divergence_2d(p: np.ndarray, q: np.ndarray, bins: int = 100, eps: float = 1e-10) -> float:
    """KL(P‖Q) of two 2-D sample sets on a ``bins`` × ``bins`` histogram (the papers' metric)."""
    hp, hq = _histograms(p, q, bins)
    return float(np.sum(hp * np.log((hp + eps) / (hq + eps))))


def js_divergence_2d(p: np.ndarray, q: np.ndarray, bins: int = 100) -> float:
    """Jensen–Shannon divergence (nats) of two 2-D sample sets on a ``bins`` × ``bins`` histogram."""
    hp, hq = _histograms(p, q, bins)
    mid = 0.5 * (hp + hq)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / mid[nz])))

    return 0.5 * kl(hp) + 0.5 * kl(hq)


def free_energy_profile_rmse(p: np.ndarray, q: np.ndarray, bins: int = 50, min_count: int = 10) -> float:
    """RMSE (k_BT) between the 1-D free-energy profiles of two sample sets of one CV.

    Bins (over the common range) count when both sets have at least ``min_count``
    samples there; the profiles are aligned by their mean difference over those bins.
    """
    p, q = np.ravel(p).astype(float), np.ravel(q).astype(float)
    if not (len(p) and len(q)) or not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise LatfError("free-energy profiles need finite, non-empty sample sets")
    edges = np.linspace(min(p.min(), q.min()), max(p.max(), q.max()), bins + 1)
    cp, cq = np.histogram(p, edges)[0], np.histogram(q, edges)[0]
    both = (cp >= min_count) & (cq >= min_count)
    if not both.any():
        raise LatfError("the two sample sets share no populated bins")
    diff = -np.log(cp[both] / len(p)) + np.log(cq[both] / len(q))
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))


def free_energy_profile_change(
    before: np.ndarray,
    after: np.ndarray,
    edges: np.ndarray,
    weights_before: np.ndarray | None = None,
    weights_after: np.ndarray | None = None,
) -> float:
    """Probability-weighted RMS change (k_BT) of a 1-D free-energy profile between two weighted samples.

    Bins holding ≥ 0.1 % of the ``after`` distribution count, weighted by that probability,
    after removing the weighted mean difference (free energies are defined up to a constant).
    A bin ``before`` never reached is given probability 1e-6, so a newly found region counts
    as a change of several k_BT.
    """
    p_before = np.histogram(before, edges, weights=weights_before)[0]
    p_after = np.histogram(after, edges, weights=weights_after)[0]
    if not (p_before.sum() > 0 and p_after.sum() > 0):
        raise LatfError("free-energy profile change: a sample set has no weight inside the bins")
    p_before, p_after = p_before / p_before.sum(), p_after / p_after.sum()
    significant = p_after > 1e-3
    delta = np.log(np.maximum(p_before[significant], 1e-6)) - np.log(p_after[significant])
    weight = p_after[significant] / p_after[significant].sum()
    delta -= np.sum(weight * delta)
    return float(np.sqrt(np.sum(weight * delta**2)))
