"""Design-based estimators of accuracy and area for a stratified random sample.

Pure numpy. The strata are the map classes; the sample error matrix ``n[i, j]`` counts sample
units of map class (stratum) ``i`` with reference class ``j``; ``W[i]`` is the share of the
mapped area in stratum ``i``. The estimators are those of Olofsson et al. (2014), "Good
practices for estimating area and assessing accuracy of land change", Remote Sensing of
Environment 148:42-57, eqs. 1-11 (after Cochran 1977 and Olofsson et al. 2013):

* estimated area proportions ``p[i, j] = W[i] n[i, j] / n[i.]``;
* overall accuracy ``O = sum_j p[j, j]``, user's accuracy ``U[i] = p[i, i] / p[i.]``, producer's
  accuracy ``P[j] = p[j, j] / p[.j]``;
* ``V(O) = sum_i W[i]^2 U[i] (1 - U[i]) / (n[i.] - 1)``; ``V(U[i]) = U[i] (1 - U[i]) / (n[i.] - 1)``;
  ``V(P[j]) = (N[j.]^2 (1 - P[j])^2 U[j] (1 - U[j]) / (n[j.] - 1)
  + P[j]^2 sum_{i != j} N[i.]^2 n[i, j] / n[i.] (1 - n[i, j] / n[i.]) / (n[i.] - 1)) / N[.j]^2``;
* area ``A[j] = A_total p[.j]`` with ``V(p[.j]) = sum_i W[i]^2 f[i, j] (1 - f[i, j]) / (n[i.] - 1)``,
  ``f = n / n[i.]``; ``SE(A[j]) = A_total SE(p[.j])``.

Two cases the paper leaves open are made explicit instead of becoming silent NaN:

* a mapped stratum with **one** sample unit: its variance term ``.../(n - 1)`` is undefined, so
  every standard error that sums over it (OA, areas, producer's accuracies, its user's
  accuracy) is ``nan`` here (``null`` in JSON) and a warning says which stratum;
* a mapped stratum with **no** sample unit: nothing is known about its errors. Its map label is
  taken as correct (``p[i, i] = W[i]``, no variance) so the areas still sum to the total, and a
  warning says so; its user's accuracy is undefined.

A reference class the map never shows is a class with ``W = 0``: a column, no stratum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Z95", "Estimates", "stratified_estimates"]

Z95 = 1.96  # the issue and Olofsson et al. report 95 % intervals as estimate +/- 1.96 SE


@dataclass
class Estimates:
    """Estimates and standard errors over ``k`` classes (``nan`` where undefined)."""

    classes: list[str]
    counts: np.ndarray          # (k, k) sample counts, map rows x reference columns
    weights: np.ndarray         # (k,) W_i, mapped area shares
    proportions: np.ndarray     # (k, k) p_ij, estimated area proportions
    overall: float
    overall_se: float
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    area_prop: np.ndarray       # p_.j
    area_prop_se: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _stratum_fractions(counts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``f[i, j] = n_ij / n_i.`` and its variance term ``f (1 - f) / (n_i. - 1)``.

    Unsampled mapped strata get ``f = identity row`` (map taken as correct, variance 0); strata
    with one unit an undefined (``nan``) variance; strata with ``W = 0`` contribute nothing.
    """
    k = len(weights)
    n_i = counts.sum(axis=1)
    f = np.divide(counts, n_i[:, None], out=np.zeros((k, k)), where=n_i[:, None] > 0)
    unsampled = (n_i == 0) & (weights > 0)
    f[unsampled] = np.eye(k)[unsampled]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = f * (1.0 - f) / (n_i[:, None] - 1.0)
    var[(n_i == 0) | (weights == 0)] = 0.0
    var[(n_i == 1) & (weights > 0)] = np.nan
    return f, var, n_i


def stratified_estimates(counts: np.ndarray, weights: np.ndarray, classes: Sequence[str]) -> Estimates:
    """Olofsson et al. (2014) eqs. 1-11 from sample counts and stratum weights.

    ``counts``: (k, k) sample units, map class (stratum) rows x reference class columns, over one
    class list; ``weights``: (k,) mapped-area share of each class (pixel counts also work: they
    are normalised), ``0`` for a class only the reference has.
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    k = len(classes)
    if counts.shape != (k, k) or weights.shape != (k,):
        raise ValueError(f"counts {counts.shape} and weights {weights.shape} do not match {k} classes")
    if (counts < 0).any() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("counts and weights must be non-negative, with some mapped area")
    stray = (weights == 0) & (counts.sum(axis=1) > 0)
    if stray.any():
        raise ValueError(f"sample units in strata with no mapped area: {[classes[i] for i in np.flatnonzero(stray)]}")
    w = weights / weights.sum()
    f, var, n_i = _stratum_fractions(counts, w)
    notes = [f"stratum {classes[i]!r} has no sample point: its map label is taken as correct "
             "(no error, no variance), so the estimates are conditional on that" for i in np.flatnonzero((n_i == 0) & (w > 0))]
    notes += [f"stratum {classes[i]!r} has 1 sample point: its variance is undefined, so the "
              "confidence intervals that depend on it (overall accuracy, every area and producer's "
              "accuracy, its user's accuracy) are null" for i in np.flatnonzero((n_i == 1) & (w > 0))]

    p = w[:, None] * f                                   # error matrix of area proportions
    diag = np.diag(p)
    p_row, p_col = p.sum(axis=1), p.sum(axis=0)          # p_i. = W_i, p_.j = area proportion
    with np.errstate(divide="ignore", invalid="ignore"):
        users = np.where(n_i > 0, diag / p_row, np.nan)
        producers = np.where(p_col > 0, diag / p_col, np.nan)
    var_users = np.where(n_i > 0, np.diag(var), np.nan)  # U(1-U)/(n-1)
    var_overall = float(np.sum(w**2 * np.diag(var)))
    var_area = (w[:, None] ** 2 * var).sum(axis=0)
    off = w[:, None] ** 2 * var
    off[np.diag_indices(k)] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        var_prod = (w**2 * (1 - producers) ** 2 * np.diag(var) + producers**2 * off.sum(axis=0)) / p_col**2
    return Estimates(
        classes=[str(c) for c in classes], counts=counts, weights=w, proportions=p,
        overall=float(diag.sum()), overall_se=float(np.sqrt(var_overall)),
        users=users, users_se=np.sqrt(var_users), producers=producers, producers_se=np.sqrt(var_prod),
        area_prop=p_col, area_prop_se=np.sqrt(var_area), warnings=notes,
    )
