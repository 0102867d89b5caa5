"""The paper comparison: numbers within 3 points are reproduced, orders are checked on our runs, and a
different dataset or network is 'not testable here', never a silent pass."""

import math

import pandas as pd
import pytest

from robustlib.reporting import paper


def _ours(rows):
    return pd.DataFrame(rows).set_index("run")


def test_numbers_within_three_points_are_reproduced_and_outside_are_not():
    ours = _ours([{"run": "hamming_stability_verify", "clean": 36.66 + 2.99, "pgd": 25.56 - 3.2, "verified": None},
                  {"run": "rs_loss", "clean": 40.45, "pgd": 26.78, "verified": 20.27}])
    models = {"hamming_stability_verify": "smallcnn", "rs_loss": "smallcnn"}
    table, lines = paper.compare(paper.TABLE2, ours, models, "cifar10")
    v = table.set_index(["run", "metric"])["verdict"]
    assert v["hamming_stability_verify", "clean"] == "reproduced (+2.99 points)"
    assert v["hamming_stability_verify", "pgd"] == "not reproduced (-3.20 points)"
    assert v["hamming_stability_verify", "verified"].startswith("not testable here (not measured")
    assert v["rs_loss", "verified"] == "reproduced (+0.00 points)"
    assert len(lines) == 1 and "not testable here" in lines[0]  # the order needs both verified numbers
    assert table.set_index(["run", "metric"]).at[("hamming_stability_verify", "pgd"), "ours_minus_paper"] == -3.2
    assert "smallcnn" in lines[0] and "cifar10" in lines[0]


def test_an_optional_reading_is_compared_only_in_profiles_that_define_it():
    ours = _ours([{"run": "hamming_stability_verify", "clean": 10.0, "pgd": 10.0, "verified": 10.0},
                  {"run": "hamming_stability_verify_mean", "clean": 37.0, "pgd": 25.0, "verified": 22.0},
                  {"run": "rs_loss", "clean": 40.45, "pgd": 26.78, "verified": 20.27}])
    models = {"hamming_stability_verify": "smallcnn", "rs_loss": "smallcnn"}
    table, lines = paper.compare(paper.TABLE2, ours, models, "cifar10")
    assert "hamming_stability_verify_mean" not in set(table["run"]) and len(lines) == 1
    assert lines[0].endswith("not reproduced (behind by 10.27 points)")
    table, lines = paper.compare(paper.TABLE2, ours, {**models, "hamming_stability_verify_mean": "smallcnn"}, "cifar10")
    v = table.set_index(["run", "metric"])["verdict"]
    assert v["hamming_stability_verify_mean", "clean"] == "reproduced (+0.34 points)"
    assert len(lines) == 2 and lines[1].startswith("Hamming regularization (batch-mean reading)")
    assert lines[1].endswith("-- reproduced (ahead by 1.73 points)")


def test_another_dataset_or_network_is_not_testable_but_orders_are_checked():
    ours = _ours([{"run": "hamming_stability", "clean_%": 91.0, "pgd_linf_%": 8.0},
                  {"run": "dense_laplacian", "clean_%": 94.0, "pgd_linf_%": 14.0}])
    models = {"hamming_stability": "smallcnn", "dense_laplacian": "smallcnn"}
    table, lines = paper.compare(paper.TABLE4, ours, models, "mnist")
    assert set(table["verdict"]) == {"not testable here (paper: cifar10; ours: mnist)"}
    assert set(table["ours_minus_paper"]) == {"-"} and list(table["ours"]) == [91.0, 8.0, 94.0, 14.0]
    table, lines = paper.compare(paper.TABLE4, ours, models, "cifar10")
    assert set(table["verdict"]) == {"not testable here (paper: preactresnet18; ours: smallcnn)"}
    assert lines[0].endswith("not reproduced (behind by 6.00 points)")
    assert lines[1].endswith("not reproduced (behind by 3.00 points)")
    swapped = ours.rename(index={"hamming_stability": "dense_laplacian", "dense_laplacian": "hamming_stability"})
    _, lines = paper.compare(paper.TABLE4, swapped, models, "cifar10")
    assert lines[0].endswith("reproduced (ahead by 6.00 points)")


def test_training_time_order_is_lower_is_better_with_the_ratio():
    ours = _ours([{"run": "hamming_stability", "train_minutes": 10.0}, {"run": "pgd_at", "train_minutes": 25.0}])
    _, lines = paper.compare(paper.TABLE1, ours, {}, "cifar10")
    speed = [line for line in lines if "trains faster" in line]
    assert speed == [speed[0]] and speed[0].endswith("reproduced (ahead by 15.00 minutes, 2.5x)")
    # perceptual columns that were not run ("-" or "n/a" in Table 1) are not measured, never a pass
    assert all("not testable here" in line for line in lines if "StAdv" in line)


def test_distances_use_a_relative_tolerance():
    assert paper.number_verdict(9.597, 9.8, percent=False) == "reproduced (+2.1%)"
    assert paper.number_verdict(9.597, 10.0, percent=False) == "not reproduced (+4.2%)"
    ours = pd.DataFrame([{"mean": 9.6, "median": 9.0, "p10": 5.867}], index=["data"])
    table, _ = paper.compare(paper.APPENDIX_B, ours, {}, "cifar10")
    assert list(table["verdict"]) == ["reproduced (+0.0%)", "not reproduced (-4.3%)", "reproduced (+0.0%)"]


def test_an_order_is_also_judged_by_the_stricter_measure():
    """Table 3's PGD orders also get the verdict of the worst case over every attack: a PGD lead that
    AutoAttack erases is visible beside the paper metric's verdict."""
    ours = _ours([{"run": "hamming_stability", "pgd_linf_%": 14.0, "worst_linf_%": 0.0},
                  {"run": "fgsm_at", "pgd_linf_%": 0.0, "worst_linf_%": 0.0}])
    _, lines = paper.compare(paper.TABLE3, ours, {}, "mnist")
    fgsm = [line for line in lines if "FGSM" in line][0]
    assert "-- reproduced (ahead by 14.00 points); by worst_linf_% (stricter): 0.00 vs 0.00 -- not reproduced (a tie)" \
        in fgsm


def test_paired_test_matches_brute_force_over_every_outcome():
    """The one-sided exact McNemar p-value equals the share of the 2^m equally likely swaps of the m
    discordant examples that give the first run at least its observed lead (independent enumeration)."""
    import itertools

    for a_only, b_only, concordant in ((4, 0, 96), (5, 0, 0), (6, 3, 10), (2, 7, 1), (0, 0, 5)):
        a = pd.Series([True] * a_only + [False] * b_only + [True] * concordant)
        b = pd.Series([False] * a_only + [True] * b_only + [True] * concordant)
        t = paper.paired_test(a, b)
        m = a_only + b_only
        lead = sum(1 for swaps in itertools.product((0, 1), repeat=m) if sum(swaps) >= a_only) / 2 ** m
        assert (t.n, t.a_only, t.b_only) == (m + concordant, a_only, b_only)
        assert abs(t.p - lead) < 1e-12
    assert paper.paired_test(pd.Series([True] * 4), pd.Series([False] * 4)).p == 1 / 16


@pytest.mark.parametrize("a_only,b_only,n", [(6, 0, 100), (4, 0, 100), (20, 0, 100), (15, 9, 40), (3, 3, 10),
                                             (0, 5, 10), (5, 0, 5)])
def test_flip_is_the_fewest_changed_outcomes_that_cross_the_significance_level(a_only, b_only, n):
    """Against brute force: every way of changing k outcomes (i of them on A's side, k - i on B's), the p-value
    summed term by term from the binomial distribution."""
    def p(a, b):
        return sum(math.comb(a + b, k) for k in range(a, a + b + 1)) / 2 ** (a + b)

    t = paper.PairedTest(n, a_only, b_only, p(a_only, b_only))
    sig = t.p < paper.SIGNIFICANCE
    step = -1 if sig else 1
    found = None
    for k in range(1, n + 1):
        cells = [(a_only + step * i, b_only - step * (k - i)) for i in range(k + 1)]
        if any(a >= 0 and b >= 0 and a + b <= n and (p(a, b) < paper.SIGNIFICANCE) != sig for a, b in cells):
            found = k
            break
    assert t.flip == found
    assert paper.PairedTest(100, 6, 0, p(6, 0)).flip == 1 and paper.PairedTest(100, 4, 0, p(4, 0)).flip == 1


def test_paired_test_aligns_the_examples_both_runs_were_measured_on():
    a = pd.Series([True, True, False], index=[7, 3, 9])
    b = pd.Series([False, True, False, True], index=[3, 7, 9, 11])  # 11: only b measured it
    t = paper.paired_test(a, b)
    assert (t.n, t.a_only, t.b_only) == (3, 1, 0)


def test_an_order_that_is_not_significant_on_the_same_examples_is_not_reproduced():
    """4 of 100 examples ahead (4 vs 0 discordant): p = 1/16 >= 0.05, so not reproduced; 6 vs 0:
    p = 1/64, reproduced; the numbers alone (no per-example outcomes) keep the plain order verdict."""
    ours = _ours([{"run": "hamming_stability", "pgd_linf_%": 4.0, "worst_linf_%": 0.0},
                  {"run": "hamming_only", "pgd_linf_%": 0.0, "worst_linf_%": 0.0}])

    def outcomes(ahead):
        per_run = {"hamming_stability": pd.Series([True] * ahead + [False] * (100 - ahead)),
                   "hamming_only": pd.Series([False] * 100)}
        return lambda run, metric: per_run.get(run) if metric == "pgd_linf_%" else None

    def line(lines):
        return [x for x in lines if "than Hamming only" in x][0]

    _, lines = paper.compare(paper.TABLE3, ours, {}, "mnist", outcomes(4))
    assert "-- not reproduced (ahead by 4.00 points, not significant; 4 vs 0 of 100 paired examples right only " \
           "by one run, one-sided exact McNemar p = 0.062 >= 0.05; 1 more example(s) ahead would make it " \
           "significant)" in line(lines)
    _, lines = paper.compare(paper.TABLE3, ours.assign(**{"pgd_linf_%": [6.0, 0.0]}), {}, "mnist", outcomes(6))
    assert "-- reproduced (ahead by 6.00 points; 6 vs 0 of 100 paired examples right only by one run, " \
           "one-sided exact McNemar p = 0.016; 1 changed example outcome(s) would make it not significant: within " \
           "the noise of a rerun)" in line(lines)  # 6 vs 1: p = 8/128
    _, lines = paper.compare(paper.TABLE3, ours.assign(**{"pgd_linf_%": [20.0, 0.0]}), {}, "mnist", outcomes(20))
    assert "p = 9.5e-07; 11 changed example outcomes would make it not significant); by worst" in line(lines)
    _, lines = paper.compare(paper.TABLE3, ours, {}, "mnist")
    assert "-- reproduced (ahead by 4.00 points)" in line(lines)


def _binomial_tail(n, p, k_from, k_to):
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k_from, k_to + 1))


def test_proportion_interval_is_the_exact_clopper_pearson_interval():
    # The definition (Clopper & Pearson 1934), summed term by term: at the lower end P[X >= k] = a/2, at the
    # upper end P[X <= k] = a/2; the closed forms at k = 0 and k = n.
    a = 1 - paper.CONFIDENCE
    for k, n in [(1, 10), (3, 10), (50, 100), (210, 1000), (999, 1000)]:
        lo, hi = paper.proportion_interval(k, n)
        assert 0 < lo < k / n < hi <= 1
        assert math.isclose(_binomial_tail(n, lo, k, n), a / 2, rel_tol=1e-6)
        if k < n:
            assert math.isclose(_binomial_tail(n, hi, 0, k), a / 2, rel_tol=1e-6)
    assert paper.proportion_interval(0, 20) == (0.0, pytest.approx(1 - (a / 2) ** (1 / 20)))
    assert paper.proportion_interval(20, 20) == (pytest.approx((a / 2) ** (1 / 20)), 1.0)
    lo_wide, hi_wide = paper.proportion_interval(30, 100, level=0.99)
    lo, hi = paper.proportion_interval(30, 100)
    assert lo_wide < lo and hi < hi_wide
    for bad in [(-1, 10), (11, 10), (0, 0), (1.5, 10)]:
        with pytest.raises(ValueError):
            paper.proportion_interval(*bad)


def test_a_percentage_of_n_examples_states_its_interval_and_where_the_paper_lies():
    # 21.04% verified in the paper; ours 17.5% of 200 (not reproduced by 3.54 points, yet the paper's number
    # is inside our 95% interval) and 21.0% of 1,000 (20.27: reproduced, inside).
    ours = _ours([{"run": "hamming_stability_verify", "n": 200, "clean": 36.0, "pgd": 25.0, "verified": 17.5},
                  {"run": "rs_loss", "n": 1000, "clean": 45.0, "pgd": 26.0, "verified": 21.0}])
    models = {"hamming_stability_verify": "smallcnn", "rs_loss": "smallcnn"}
    table, _ = paper.compare(paper.TABLE2, ours, models, "cifar10")
    v = table.set_index(["run", "metric"])["verdict"]
    lo, hi = (100 * b for b in paper.proportion_interval(35, 200))
    assert v["hamming_stability_verify", "verified"] == (
        f"not reproduced (-3.54 points; ours 95% CI {lo:.1f}-{hi:.1f} on 200 examples, the paper's number inside it)")
    assert v["rs_loss", "verified"].startswith("reproduced (+0.73 points; ours 95% CI")
    assert v["rs_loss", "clean"].endswith("the paper's number outside it)")  # 45.0 vs 40.45: 41.9-48.1
    # without an n column, the per-example outcomes give n -- but only when their mean is the table's number
    ours = ours.drop(columns="n")
    hits = pd.Series([True] * 175 + [False] * 825)
    table, _ = paper.compare(paper.TABLE2, ours, models, "cifar10",
                             lambda run, metric: hits if metric == "verified" else None)
    v = table.set_index(["run", "metric"])["verdict"]
    assert "on 1000 examples" in v["hamming_stability_verify", "verified"]
    assert v["rs_loss", "verified"] == "reproduced (+0.73 points)"  # 17.5% of outcomes is not its 21.0
    assert v["rs_loss", "clean"] == "not reproduced (+4.55 points)"
