"""The report's figures of the paper's tables (ours beside the paper's numbers) on synthetic inputs, and the
labels they write (eps as k/255 on CIFAR-10, class names)."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from robustlib.evaluation import schema
from robustlib.reporting import paper
from robustlib.reporting import paper_figures as F
from robustlib.reporting.labels import class_name, format_eps

matplotlib.use("Agg")


@pytest.mark.parametrize("eps,dataset,text", [
    (0.0078431, "cifar10", "2/255"), (0.0313725, "cifar10", "8/255"), (8 / 255, "cifar10", "8/255"),
    (1 / 255, "cifar100", "1/255"), (0.0, "cifar10", "0"), (0.1, "cifar10", "0.1"), (0.031, "cifar10", "0.031"),
    (0.3, "mnist", "0.3"), (0.0078431, "mnist", "0.0078431"), (0.2, None, "0.2"), (0.2, "cifar10", "51/255"),
])
def test_eps_is_written_as_the_paper_writes_it(eps, dataset, text):
    assert format_eps(eps, dataset) == text


def test_class_names():
    assert class_name("cifar10", 3) == "cat" and class_name("mnist", 7) == "7" and class_name(None, 2) == "2"


def _marks(fig, marker):
    """(x, y, colour) of every paper mark drawn (``paper_figures._mark``), per axes."""
    return [(ax, line.get_xdata()[0], line.get_ydata()[0], line.get_markeredgecolor())
            for ax in fig.axes for line in ax.get_lines() if line.get_marker() == marker]


def _table1(ours_clean: float = 70.0):
    """A Table 1 analogue: the paper's two runs and one other, on the paper's network (so verdicts are given)."""
    t1 = pd.DataFrame([
        {schema.RUN: "hamming_stability", schema.TABLE_CLEAN: ours_clean, schema.LINF_AA: 30.0,
         schema.LINF_WORST: 30.0, schema.L2_AA: 20.0, schema.RECOLOR: "n/a", schema.TRAIN_MINUTES: 10.0},
        {schema.RUN: "other_run_with_a_long_name", schema.TABLE_CLEAN: 50.0, schema.LINF_AA: 1.0,
         schema.LINF_WORST: 1.0, schema.L2_AA: 2.0, schema.RECOLOR: "n/a", schema.TRAIN_MINUTES: 5.0},
        {schema.RUN: "pgd_at", schema.TABLE_CLEAN: 86.0, schema.LINF_AA: 49.0, schema.LINF_WORST: 48.0,
         schema.L2_AA: 19.0, schema.RECOLOR: "n/a", schema.TRAIN_MINUTES: 40.0}])
    models = {r: "preactresnet18" for r in t1[schema.RUN]}
    comparison, _ = paper.compare(paper.TABLE1, t1.set_index(schema.RUN), models, "cifar10")
    return t1, comparison


def test_table_figure_marks_the_papers_numbers_on_the_papers_rows():
    t1, comparison = _table1()
    columns = [schema.TABLE_CLEAN, schema.LINF_AA, schema.LINF_WORST, schema.L2_AA, schema.RECOLOR,
               schema.TRAIN_MINUTES]
    fig = F.beside_paper_figure(t1, columns, paper.TABLE1, comparison, "Table 1 analog", "cifar10")
    runs = list(t1[schema.RUN])
    marks = _marks(fig, F.MARK_ACROSS["h"])
    by_title = {(ax.get_title(), round(float(x), 3), int(y)): colour for ax, x, y, colour in marks}
    paper_values = paper.TABLE1.values
    # clean: ours 70.0 vs 72.1 reproduced (green); pgd_at 86.0 vs 86.8 reproduced
    assert by_title[("clean", 72.1, runs.index("hamming_stability"))] == F.VERDICT_COLOURS["reproduced"]
    assert by_title[("clean", 86.8, runs.index("pgd_at"))] == F.VERDICT_COLOURS["reproduced"]
    # l2_AA: ours 20.0 vs the paper's 43.4, not reproduced (red)
    l2 = paper_values["hamming_stability"][schema.L2_AA]
    assert by_title[("l2_AA", l2, 0)] == F.VERDICT_COLOURS["not reproduced"]
    # minutes: the order claim's 252 and 1620, on a log axis
    assert ("training minutes (log)", 252.0, 0) in by_title and ("training minutes (log)", 1620.0, 2) in by_title
    assert not any(y == runs.index("other_run_with_a_long_name") for _, _, y, _ in marks)  # no paper row
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert texts.count("n/a") == 3 and "70.0" in texts  # n/a written, values written
    ticks = {t.get_text(): t.get_fontweight() for t in fig.axes[0].get_yticklabels()}
    assert ticks["pgd_at"] == "bold" and ticks["other_run_with_a_long_name"] == "normal"
    small = F.beside_paper_figure(t1.iloc[:1], columns, paper.TABLE1, comparison, "Table 1 analog")
    assert fig.get_figheight() > small.get_figheight()  # sized by the number of runs
    matplotlib.pyplot.close("all")


def test_paper_marks_take_numbers_from_the_comparison_and_minutes_from_the_orders():
    _, comparison = _table1()
    marks = F.paper_marks(paper.TABLE1, comparison).set_index([schema.RUN, schema.METRIC])
    assert marks.loc[("hamming_stability", schema.TRAIN_MINUTES), "kind"] == "order claim"
    assert marks.loc[("pgd_at", schema.TRAIN_MINUTES), schema.PAPER_VALUE] == 1620.0
    assert marks.loc[("hamming_stability", schema.NPTM_COLUMN), schema.PAPER_VALUE] == 9.1
    assert F.verdict_kind("not testable here (paper: cifar10; ours: mnist)") == "not testable here"
    assert F.verdict_kind("not reproduced (-3.5 points)") == "not reproduced"


def _table2(eps=(0.0078431, 0.0313725)):
    rows = []
    for run, clean, pgd, aa, ver in (("rs_loss", 35.0, 27.0, 26.0, 20.0), ("hamming_stability_verify", 10, 9, 9, 9),
                                     ("standard", 78.0, 0.0, 0.0, 0.0)):
        for e in eps:
            rows.append({schema.RUN: run, schema.EPS: e, schema.N: 100, schema.TABLE_CLEAN: clean,
                         schema.T2_PGD: pgd, schema.T2_AUTOATTACK: aa, schema.T2_VERIFIED: ver})
    t2 = pd.DataFrame(rows)
    at_8 = t2[(t2[schema.EPS] - paper.PAPER_EPS).abs() < 1e-6].set_index(schema.RUN)
    models = {r: "smallcnn" for r in t2[schema.RUN]}
    comparison, _ = paper.compare(paper.TABLE2, at_8, models, "cifar10")
    per_example = {r: pd.DataFrame({schema.INDEX: [0, 1, 0, 1], schema.EPS: [eps[0], eps[0], eps[-1], eps[-1]],
                                    schema.VERIFY_SECONDS: [0.01, 0.1, 1.0, 2.0],
                                    schema.VERIFY_UNSTABLE: [1, 2, 30, 40]}) for r in models}
    return t2, comparison, per_example


def test_verification_figure_leads_with_verified_pgd_autoattack_beside_the_paper():
    t2, comparison, per_example = _table2()
    fig = F.verification_figure(t2, comparison, paper.TABLE2, per_example, "cifar10")
    marks = _marks(fig, F.MARK_ACROSS["v"])
    values = sorted(round(float(y), 2) for _, _, y, _ in marks)
    table = paper.TABLE2.values  # rs_loss and hamming_stability_verify: clean, PGD, verified at 8/255 each
    assert values == sorted([*table["rs_loss"].values(), *table["hamming_stability_verify"].values()])
    rs = [m for m in marks if m[0].get_title().startswith("rs_loss")]
    colour = {round(float(y), 2): c for _, _, y, c in rs}
    assert colour[26.78] == F.VERDICT_COLOURS["reproduced"] and colour[40.45] == F.VERDICT_COLOURS["not reproduced"]
    ax = rs[0][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2/255", "8/255"]
    assert all(x > 0.5 for _, x, _, _ in rs)  # over the bars of the second group, 8/255
    bars = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert bars == sorted([35.0, 27.0, 26.0, 20.0] * 2)  # clean, PGD, AutoAttack, verified at each eps
    assert any("seconds per example" == a.get_ylabel() for a in fig.axes)  # the cost, below
    matplotlib.pyplot.close(fig)


def test_verification_figure_says_when_the_papers_eps_is_not_measured():
    t2, comparison, per_example = _table2(eps=(0.1, 0.3))
    fig = F.verification_figure(t2, comparison, paper.TABLE2, per_example, "mnist")
    assert not _marks(fig, F.MARK_ACROSS["v"])
    titles = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert any("none drawn" in t for t in titles)
    legend = [h.get_label() for lg in fig.legends for h in lg.legend_handles if isinstance(h, Line2D)]
    assert not any(label.startswith("paper:") for label in legend)
    matplotlib.pyplot.close(fig)
