"""Every row of README.md's tables with a "tested by" column names test files that exist (and,
for `file.py::name`, a test function of that name) or says "not tested" and why, so a renamed
or deleted test cannot leave a feature claim with nothing behind it."""
import ast
import re
from pathlib import Path
from typing import Iterator, List, Tuple

from conftest import ROOT

TESTS = ROOT / "tests"


def _cells(line: str) -> List[str]:
    # `\|` escapes a pipe inside a cell (`--device auto\|npu`).
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def rows_with_tests(markdown: str) -> Iterator[Tuple[str, str]]:
    """(first cell, "tested by" cell) of every body row of every table with that column."""
    column = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = _cells(line)
        if column is None:
            column = cells.index("tested by") if "tested by" in cells else -1
        elif column >= 0 and not set(line) <= set("|- "):
            yield cells[0], cells[column]


def _test_names(path: Path) -> set:
    return {node.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def missing_tests(markdown: str) -> List[str]:
    problems = []
    rows = list(rows_with_tests(markdown))
    if not rows:
        return ["no table with a 'tested by' column"]
    for feature, cell in rows:
        named = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", cell)
        # A row may say outright that nothing tests it (and why); silence is the defect.
        if not named and not cell.startswith("not tested"):
            problems.append(f"{feature}: names no test file")
        for filename, function in named:
            path = TESTS / filename
            if not path.is_file():
                problems.append(f"{feature}: tests/{filename} does not exist")
            elif function and function not in _test_names(path):
                problems.append(f"{feature}: tests/{filename} has no {function}")
    return problems


def test_every_readme_feature_names_an_existing_test():
    assert missing_tests((ROOT / "README.md").read_text()) == []


def test_a_missing_file_or_function_is_reported():
    table = ("| feature | flags | tested by |\n| --- | --- | --- |\n"
             "| a | `--a` | `test_readme_claims.py` |\n"
             "| b | `--b\\|c` | `test_no_such_file.py` |\n"
             "| c | `--c` | `test_readme_claims.py::test_no_such_function` |\n"
             "| d | `--d` | by hand |\n"
             "| e | `--e` | not tested: needs two nodes |\n")
    assert missing_tests(table) == ["b: tests/test_no_such_file.py does not exist",
                                    "c: tests/test_readme_claims.py has no test_no_such_function",
                                    "d: names no test file"]
