"""The examples of python/README.md, run as doctests against the test server: each ```python
block is one notebook cell, run in order in one namespace, and each is a test of its own."""

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.DOTALL)
    ]


BLOCKS = blocks()


@pytest.fixture(scope="module")
def notebook(uri, tmp_path_factory):
    """Runs every cell once, in order, and keeps each one's doctest outcome and report."""
    exports = tmp_path_factory.mktemp("readme-exports")
    env = {
        "PITLAKE_URI": uri,
        "PITLAKE_USERNAME": "alice",
        "PITLAKE_PASSWORD": "alice-pw",
        "PITLAKE_EXPORTS": str(exports),
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("PITLAKE_TOKEN", raising=False)
    namespace = {}
    outcomes = {}
    parser = doctest.DocTestParser()
    try:
        for line, source in BLOCKS:
            test = parser.get_doctest(source, namespace, f"README.md:{line}", str(README), line)
            report = []
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            result = runner.run(test, out=report.append, clear_globs=False)
            namespace = test.globs
            outcomes[line] = (result, "".join(report))
    finally:
        fs = namespace.get("fs")
        if fs is not None:
            fs.close()
        mp.undo()
    return outcomes


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 6
    assert all(">>>" in source for _, source in BLOCKS)


@pytest.mark.parametrize("line", [line for line, _ in BLOCKS])
def test_readme_example(notebook, line):
    result, report = notebook[line]
    assert result.attempted > 0
    assert result.failed == 0, report
