"""The distributions: ``python -m build`` gives an sdist that holds the source tree without data or build products,
and a wheel that holds the package, its license and its command. .ci/package_smoke.sh installs the wheel in a fresh
environment and trains with it."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pengster

ROOT = Path(__file__).resolve().parent.parent
DATA_SUFFIXES = (".h5ad", ".h5mu", ".h5", ".zarr", ".ckpt", ".safetensors", ".pt", ".pyc")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend of the test environment, no download
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return out


def tracked(prefix: str) -> set[str]:
    listed = subprocess.run(["git", "ls-files", prefix], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


def test_the_sdist_holds_the_source_and_no_data(dist):
    (sdist,) = dist.glob(f"pengster-{pengster.__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in ["pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "src/pengster/py.typed", "docs/conf.py"]:
        assert required in names, f"the sdist lacks {required}"
    missing = {path for path in tracked("src/pengster") if path.endswith(".py")} - names
    assert not missing, f"the sdist lacks package files: {sorted(missing)}"
    data = sorted(name for name in names if name.endswith(DATA_SUFFIXES))
    assert not data, f"the sdist holds data or build products: {data}"
    built = sorted(name for name in names if name.startswith(("docs/_build/", "docs/generated/", ".venv/", ".ci/")))
    assert not built, f"the sdist holds build products or CI files: {built[:5]}"


def test_the_wheel_holds_the_package_its_license_and_its_command(dist):
    (wheel,) = dist.glob(f"pengster-{pengster.__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"pengster-{pengster.__version__}.dist-info/entry_points.txt").decode()
        metadata = archive.read(f"pengster-{pengster.__version__}.dist-info/METADATA").decode()
    modules = {path.removeprefix("src/") for path in tracked("src/pengster") if path.endswith(".py")}
    assert modules <= names, f"the wheel lacks {sorted(modules - names)}"
    assert "pengster/py.typed" in names
    assert f"pengster-{pengster.__version__}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if not name.startswith(("pengster/", "pengster-"))], "only the package"
    assert "pengster = pengster.cli:main" in entry_points
    assert "License-Expression: BSD-3-Clause" in metadata
    assert "Requires-Dist: torch" in metadata


def test_ci_runs_the_readme_test_command_and_the_package_smoke_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert ".ci/package_smoke.sh" in ci
    smoke = (ROOT / ".ci" / "package_smoke.sh").read_text()
    torch_first = smoke.index('install --quiet "$TORCH"')
    wheel_install = re.search(r'pip" install .*"\$\{wheel\[0\]\}"$', smoke, flags=re.MULTILINE)
    assert wheel_install and torch_first < wheel_install.start(), "PyTorch before the wheel"
