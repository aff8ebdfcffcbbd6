"""Olofsson et al. (2014) estimators: the paper's worked example, a loop re-implementation, and
coverage of the 95 % intervals by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from agrifm.assess.estimators import Z95, stratified_estimates

# Olofsson et al. 2014, section 5, Table 8: strata (map classes), mapped area in 30 m pixels and
# the sample error matrix (rows: map class, columns: reference class).
CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])
COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
PIXEL_HA = 0.09


def test_olofsson_2014_worked_example_to_printed_digits():
    """Figures printed in the paper (section 5, p. 54): estimate +/- 1.96 SE."""
    e = stratified_estimates(COUNTS, PIXELS, CLASSES)
    area_ha = e.area_prop * PIXELS.sum() * PIXEL_HA
    ci_ha = Z95 * e.area_prop_se * PIXELS.sum() * PIXEL_HA
    # areas in ha, to the hectare as printed
    assert np.round(area_ha).tolist() == [21_158, 11_686, 285_770, 581_386]
    assert np.round(ci_ha).tolist() == [6_158, 3_756, 15_510, 16_282]
    # accuracies to two decimals as printed
    assert np.round(e.users, 2).tolist() == [0.88, 0.73, 0.93, 0.96]
    assert np.round(Z95 * e.users_se, 2).tolist() == [0.07, 0.10, 0.04, 0.02]
    assert np.round(e.producers, 2).tolist() == [0.75, 0.85, 0.93, 0.96]
    assert np.round(Z95 * e.producers_se, 2).tolist() == [0.21, 0.25, 0.03, 0.02]
    assert round(e.overall, 2) == 0.95 and round(Z95 * e.overall_se, 2) == 0.02
    # Table 9 (error matrix in area proportions), first row, to 4 decimals
    assert np.round(e.proportions[0], 4).tolist() == [0.0176, 0.0, 0.0013, 0.0011]
    # internal consistency: rows sum to W, the areas to the total, OA = trace
    np.testing.assert_allclose(e.proportions.sum(1), PIXELS / PIXELS.sum())
    np.testing.assert_allclose(area_ha.sum(), PIXELS.sum() * PIXEL_HA)
    assert e.overall == pytest.approx(np.trace(e.proportions))
    assert e.warnings == []


def _loop_estimates(n, N):
    """The paper's formulas written as plain loops over strata (a second route)."""
    q = len(N)
    W = [N[i] / sum(N) for i in range(q)]
    ni = [sum(n[i]) for i in range(q)]
    p = [[W[i] * n[i][j] / ni[i] for j in range(q)] for i in range(q)]
    pc = [sum(p[i][j] for i in range(q)) for j in range(q)]
    U = [p[i][i] / W[i] for i in range(q)]
    P = [p[j][j] / pc[j] for j in range(q)]
    vO = sum(W[i] ** 2 * U[i] * (1 - U[i]) / (ni[i] - 1) for i in range(q))
    vU = [U[i] * (1 - U[i]) / (ni[i] - 1) for i in range(q)]
    Nj = [sum(N[i] * n[i][j] / ni[i] for i in range(q)) for j in range(q)]
    vP = []
    for j in range(q):
        t1 = N[j] ** 2 * (1 - P[j]) ** 2 * U[j] * (1 - U[j]) / (ni[j] - 1)
        t2 = sum(N[i] ** 2 * n[i][j] / ni[i] * (1 - n[i][j] / ni[i]) / (ni[i] - 1) for i in range(q) if i != j)
        vP.append((t1 + P[j] ** 2 * t2) / Nj[j] ** 2)
    vA = [sum(W[i] ** 2 * (n[i][j] / ni[i]) * (1 - n[i][j] / ni[i]) / (ni[i] - 1) for i in range(q)) for j in range(q)]
    return dict(p=p, O=sum(p[i][i] for i in range(q)), U=U, P=P, area=pc,
                seO=vO ** 0.5, seU=[v ** 0.5 for v in vU], seP=[v ** 0.5 for v in vP], seA=[v ** 0.5 for v in vA])


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_vectorised_matches_loop(k):
    rng = np.random.default_rng(k)
    n = rng.integers(0, 30, (k, k)) + np.diag(rng.integers(20, 80, k))
    N = rng.integers(1_000, 1_000_000, k)
    e = stratified_estimates(n, N, [str(i) for i in range(k)])
    ref = _loop_estimates(n.tolist(), N.tolist())
    np.testing.assert_allclose(e.proportions, ref["p"])
    assert e.overall == pytest.approx(ref["O"]) and e.overall_se == pytest.approx(ref["seO"])
    for got, key in ((e.users, "U"), (e.producers, "P"), (e.area_prop, "area"), (e.users_se, "seU"),
                     (e.producers_se, "seP"), (e.area_prop_se, "seA")):
        np.testing.assert_allclose(got, ref[key], rtol=1e-12)


def test_small_strata_are_flagged_not_silent():
    n = np.array([[10, 2, 0], [1, 0, 0], [0, 0, 0]])  # stratum 1 has one point, stratum 2 none
    e = stratified_estimates(n, [500, 300, 200], ["a", "b", "c"])
    assert np.isnan(e.overall_se) and np.isnan(e.area_prop_se).all() and np.isnan(e.users_se[1])
    assert not np.isnan(e.users_se[0]) and np.isnan(e.users[2])
    assert e.proportions[2, 2] == pytest.approx(0.2)  # unsampled stratum: map taken as correct
    assert e.area_prop.sum() == pytest.approx(1.0)
    assert len(e.warnings) == 2 and "'b'" in e.warnings[1] and "'c'" in e.warnings[0]


def test_reference_only_class_is_a_column():
    n = np.array([[40, 0, 2], [3, 30, 5], [0, 0, 0]])  # class 2 never mapped
    e = stratified_estimates(n, [700, 300, 0], ["a", "b", "x"])
    assert e.warnings == [] and np.isnan(e.users[2])
    assert e.area_prop[2] == pytest.approx(0.7 * 2 / 42 + 0.3 * 5 / 38)
    assert e.producers[2] == 0.0


def test_coverage_of_95_intervals_by_simulation():
    """A synthetic map with a known reference label for every pixel: over 2,000 stratified random
    samples the 95 % intervals of each class's area and of OA cover the truth in 93-97 %."""
    rng = np.random.default_rng(17)
    # population: 4 map classes with known confusion (true counts of reference classes per stratum)
    N = np.array([20_000, 60_000, 15_000, 5_000])
    truth_rows = np.array([[0.85, 0.10, 0.03, 0.02], [0.04, 0.90, 0.04, 0.02],
                           [0.05, 0.10, 0.80, 0.05], [0.10, 0.05, 0.05, 0.80]])
    pop = np.round(truth_rows * N[:, None]).astype(int)
    pop[:, -1] = N - pop[:, :-1].sum(1)
    true_area = pop.sum(0) / N.sum()
    true_oa = np.trace(pop) / N.sum()
    n_h = np.array([200, 400, 200, 200])
    reps = 2_000
    # stratified random sampling without replacement: multivariate hypergeometric per stratum
    counts = np.stack([rng.multivariate_hypergeometric(pop[i], n_h[i], size=reps) for i in range(4)], axis=1)
    W = N / N.sum()
    f = counts / n_h[None, :, None]                                   # (reps, 4, 4)
    area = (W[None, :, None] * f).sum(1)
    se_area = np.sqrt((W[None, :, None] ** 2 * f * (1 - f) / (n_h[None, :, None] - 1)).sum(1))
    oa = (W * np.diagonal(f, axis1=1, axis2=2)).sum(1)
    u = np.diagonal(f, axis1=1, axis2=2)
    se_oa = np.sqrt((W**2 * u * (1 - u) / (n_h - 1)).sum(1))
    # the vectorised simulation uses the same formulas as the estimator: check on a few replicates
    for r in range(3):
        e = stratified_estimates(counts[r], N, list("abcd"))
        np.testing.assert_allclose(e.area_prop, area[r]); np.testing.assert_allclose(e.area_prop_se, se_area[r])
        assert e.overall_se == pytest.approx(se_oa[r])
    cover_area = (np.abs(area - true_area) <= Z95 * se_area).mean(0)
    cover_oa = (np.abs(oa - true_oa) <= Z95 * se_oa).mean()
    assert ((cover_area >= 0.93) & (cover_area <= 0.97)).all(), cover_area
    assert 0.93 <= cover_oa <= 0.97, cover_oa
