"""The package installs from the repository into a fresh virtual environment, as a source tree
and as a wheel, and the installed copy works against the server."""

import subprocess
import sys
import venv
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

CHECK = """
import sys, pathlib, pitlake
root = pathlib.Path(pitlake.__file__).parent
assert str(root).startswith(sys.prefix), root          # the installed copy, not the checkout
assert (root / "py.typed").exists()
with pitlake.connect(sys.argv[1], username="alice", password="alice-pw") as fs:
    assert fs.sql("SELECT 40 + 2 AS n").to_arrow().to_pylist() == [{"n": 42}]
print(pitlake.__version__)
"""


def run(*args, cwd=None):
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_install_from_the_repository_and_as_a_wheel(tmp_path, uri):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]

    run(*pip, "install", str(PACKAGE))
    version = run(python, "-c", CHECK, uri).strip()
    import pitlake

    assert version == pitlake.__version__

    wheels = tmp_path / "wheels"
    run(*pip, "wheel", str(PACKAGE), "--no-deps", "-w", str(wheels))
    built = sorted(wheels.glob("pitlake-*.whl"))
    assert [w.name for w in built] == [f"pitlake-{version}-py3-none-any.whl"]
    run(*pip, "uninstall", "-y", "pitlake")
    run(*pip, "install", str(built[0]))
    assert run(python, "-c", CHECK, uri).strip() == version
    assert "Name: pitlake" in run(python, "-m", "pip", "show", "pitlake")
    assert sys.prefix != str(env_dir)
