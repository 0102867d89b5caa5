"""The README guides: short table cells, every file it (or the code) cites exists, and its headline
verdicts are the committed reports' verdicts."""

import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# data/ is not cited: its folders are install targets (python -m robustlib.data.install), absent from a clone.
PATH = re.compile(r"(?<![\w/.<{*-])((?:robustlib|scripts|docs|profiles|benchmarks|tests|notebooks|reports)"
                  r"/[\w./-]*+)(?![*{<])")


def _tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_no_readme_table_cell_is_over_200_characters():
    long = [c for t in _tables(README) for row in t for c in row if len(c) > 200]
    assert not long, long


def _cited(text: str) -> set[str]:
    found = {m.rstrip("./-") for m in PATH.findall(text)}
    return {m for m in found if not m.endswith(("/", "_")) and "..." not in m}


SOURCES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "robustlib").rglob("*.py"))]


@pytest.mark.parametrize("source", SOURCES)
def test_every_cited_file_exists(source):
    missing = sorted(p for p in _cited((ROOT / source).read_text()) if not (ROOT / p).exists()
                     and not (ROOT / p).with_suffix("").exists())
    assert not missing, f"{source} cites files that do not exist: {missing}"


def test_the_code_cites_design_where_it_is():
    for f in (ROOT / "robustlib").rglob("*.py"):
        assert "../shared/DESIGN.md" not in f.read_text(), f"{f}: DESIGN.md is docs/DESIGN.md in this repository"


HEADLINE = {  # README row -> the claim's line in the reports ("- <claim>: paper ... -- <verdict>")
    "Hamming regularization verifies more examples than RS loss":
        "Hamming regularization verifies more examples than RS loss",
    "Hamming regularization at our grid search's weights verifies more examples than RS loss":
        "Hamming regularization at the selected setting verifies more examples than RS loss",
    "Hamming+stability more robust (PGD) than Hamming only": "Hamming+stability is more robust (PGD) than Hamming only",
    "Hamming+stability more robust (PGD) than stability only":
        "Hamming+stability is more robust (PGD) than stability only",
    "Hamming+stability more robust (PGD) than plain FGSM-AT":
        "Hamming+stability is more robust (PGD) than plain FGSM-AT",
    "PGD-AT more robust (PGD) than Hamming+stability": "PGD-AT is more robust (PGD) than Hamming+stability",
    "Hamming+stability beats PGD-AT under L2 AutoAttack":
        "Hamming+stability is more robust than L-inf PGD-AT under L2 AutoAttack",
    "Hamming+stability trains faster than PGD-AT": "Hamming+stability trains faster than L-inf PGD-AT",
    "the sparse regularizer beats the dense Laplacian":
        "The sparse regularizer is more robust (PGD) than the dense Laplacian",
}


def _report_verdict(profile: str, claim: str) -> str:
    lines = [line for line in (ROOT / "reports" / profile / "report.md").read_text().splitlines()
             if line.startswith(f"- {claim}")]
    assert len(lines) == 1, (profile, claim, lines)
    return re.search(r" -- (reproduced|not reproduced|not testable here)", lines[0]).group(1)


def _cell_verdict(cell: str) -> str:
    return "not testable here" if cell.startswith("not measured") else cell.split(":")[0].split(" (")[0]


def test_headline_verdicts_are_the_reports():
    table = next(t for t in _tables(README) if t[0][0] == "the paper's claim")
    profiles = [re.search(r"`([\w-]+)`", h).group(1) for h in table[0][1:]]
    checked = 0
    for row in table[2:]:
        key = next((k for k in HEADLINE if row[0].startswith(k)), None)
        if key is None:
            continue
        for profile, cell in zip(profiles, row[1:], strict=True):
            where = re.search(r"`([\w-]+)`", cell)
            profile = where.group(1) if where else profile
            assert _cell_verdict(cell) == _report_verdict(profile, HEADLINE[key]), (row[0], profile, cell)
            checked += 1
    assert checked == 2 * len(HEADLINE)


def test_headline_rs_loss_numbers_are_the_reports():
    comp = pd.read_csv(ROOT / "reports" / "cifar10-cpu" / "tables" / "paper_comparison.csv")
    rs = comp[comp["paper_row"] == "RS loss (Xiao et al.)"].set_index("metric")
    row = next(r for r in _tables(README)[0] if r[0].startswith("RS loss"))
    assert row[2] == f"reproduced: {float(rs.loc['pgd', 'ours']):g} and {float(rs.loc['verified', 'ours']):g}"
    assert all(v.startswith("reproduced") for v in rs.loc[["pgd", "verified"], "verdict"])
