"""The package itself: its version is pitlake's, it is typed, it says what it exports."""

import importlib.metadata
import inspect
import re
from pathlib import Path

import pitlake

REPOSITORY = Path(__file__).resolve().parents[2]


def cargo_version() -> str:
    text = (REPOSITORY / "Cargo.toml").read_text()
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', package, re.MULTILINE)
    assert found, "Cargo.toml has no [package] version"
    return found.group(1)


def test_the_version_is_the_crates_version():
    assert pitlake.__version__ == cargo_version()
    assert importlib.metadata.version("pitlake") == cargo_version()


def test_the_package_is_typed_and_documented():
    root = Path(pitlake.__file__).parent
    assert (root / "py.typed").exists()
    for name in pitlake.__all__:
        item = getattr(pitlake, name)
        if inspect.isfunction(item) or inspect.isclass(item):
            assert item.__doc__, f"pitlake.{name} has no docstring"
    for name in dir(pitlake.Client):
        if not name.startswith("_"):
            assert getattr(pitlake.Client, name).__doc__, f"Client.{name} has no docstring"
