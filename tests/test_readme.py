"""README's measured tables agree with the results files they cite, so a number cannot drift from its file.

A table is "measured" when it holds a decimal number; it must cite a file or folder under docs/results/ in the
table or in the 14 lines above it, and every decimal number (and every integer >= 100) in its cells, the first
column and `code` aside, must be found in the cited files: in their text as written, or as a JSON/Markdown value
that rounds to it (shares also as percentages).
"""
import json
import re
from pathlib import Path

from tests.conftest import ROOT

README = ROOT / "README.md"
CITE = re.compile(r"docs/results/[\w./-]+")
NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def tables(text: str):
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            yield i, lines[i:j], lines[max(0, i - 14):i]
            i = j
        else:
            i += 1


def _values(obj, out: list):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        out.append(float(obj))
    elif isinstance(obj, dict):
        for v in obj.values():
            _values(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _values(v, out)


def cited_values(paths: list[str]) -> tuple[str, list[float]]:
    texts, values = [], []
    for rel in paths:
        p = ROOT / rel.rstrip(".,)")
        base = p.with_suffix("") if p.suffix in (".md", ".json", ".png") else p
        files = sorted(p.rglob("*")) if p.is_dir() else sorted(base.parent.glob(base.name + ".*"))
        for f in files:
            if f.suffix == ".json":
                _values(json.loads(f.read_text()), values)
            if f.suffix in (".md", ".json", ".txt"):
                texts.append(f.read_text())
    text = "\n".join(texts)
    values += [float(x) for x in NUM.findall(text)]
    return text, values


def found(token: str, text: str, values: list[float]) -> bool:
    if re.search(rf"(?<![\d.]){re.escape(token)}(?![\d])", text):
        return True
    r = float(token)
    d = len(token.split(".")[1]) if "." in token else 0
    return any(round(v, d) == r or round(100 * v, d) == r for v in values)


def measured_tables():
    text = README.read_text()
    for start, rows, above in tables(text):
        cells = [c for row in rows[2:] for c in row.strip("|").split("|")[1:]]
        cells = [re.sub(r"`[^`]*`", "", c) for c in cells]
        tokens = [t for c in cells for t in NUM.findall(c.replace("**", "")) if "." in t or abs(float(t)) >= 100]
        if any("." in t for t in tokens):
            yield start + 1, tokens, CITE.findall("\n".join(above + rows))


def test_every_measured_table_cites_a_results_file_that_holds_its_numbers():
    problems = []
    checked = 0
    for line, tokens, cites in measured_tables():
        if not cites:
            problems.append(f"README.md:{line}: a table of measured numbers cites no docs/results/ file")
            continue
        missing = [c for c in cites if not (ROOT / c.rstrip(".,)")).exists()
                   and not any((ROOT / c.rstrip(".,)")).parent.glob(Path(c.rstrip(".,)")).name + ".*"))]
        if missing:
            problems.append(f"README.md:{line}: cites {missing}, which do not exist")
            continue
        text, values = cited_values(cites)
        absent = [t for t in tokens if not found(t, text, values)]
        if absent:
            problems.append(f"README.md:{line}: {absent} not in {cites}")
        checked += 1
    assert checked >= 6, checked
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_drifted_number(tmp_path):
    text, values = cited_values(["docs/results/bench_cpu_b1_xeon_amx.md"])
    assert found("1.555", text, values) and not found("1.556", text, values)
