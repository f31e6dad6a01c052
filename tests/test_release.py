"""scripts/release.py: image tags per Python and the release checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
import release

VERSIONS = release.load_versions(
    "base:\n  python_versions: ['3.10', '3.11', '3.12', '3.13']\n  default_python: '3.12'\n"
)


def test_tags_per_python_and_for_the_default():
    assert release.tags("1.2.3", "3.11", VERSIONS, "img") == [
        "img:latest-py3.11",
        "img:1.2.3-py3.11",
    ]
    assert release.tags("1.2.3", "3.12", VERSIONS, "img") == [
        "img:latest-py3.12",
        "img:1.2.3-py3.12",
        "img:latest",
        "img:1.2.3",
    ]


def test_the_repositorys_own_files_parse():
    root = Path(__file__).parent.parent
    versions = release.load_versions((root / "versions.yaml").read_text())
    assert versions.pythons == ["3.10", "3.11", "3.12", "3.13", "3.14"]
    assert versions.default == "3.12"
    assert versions.deprecated == ["3.10"]
    assert release.VERSION_RE.match(release.project_version((root / "pyproject.toml").read_text()))


def test_default_python_must_be_listed():
    with pytest.raises(ValueError, match=r"default_python 3\.14"):
        release.load_versions("base:\n  python_versions: ['3.12']\n  default_python: '3.14'\n")


def test_project_version_reads_the_project_table_only():
    text = '[tool.x]\nversion = "9.9.9"\n[project]\nname = "p"\nversion = "0.4.1"\n'
    assert release.project_version(text) == "0.4.1"


GOOD = "# Changelog\n\n## [Unreleased]\n\n## [1.2.3] - 2026-11-24\n### Added\n- x\n"


@pytest.mark.parametrize(
    ("version", "changelog", "problem"),
    [
        ("1.2.3", GOOD, None),
        ("1.2", GOOD, "is not MAJOR.MINOR.PATCH"),
        ("1.2.3-rc1", GOOD, "is not MAJOR.MINOR.PATCH"),
        ("1.2.3", "## [1.2.3] - 2026-11-24\n", "no ## [Unreleased] section"),
        ("1.2.4", GOOD, "no ## [1.2.4] - YYYY-MM-DD section"),
        ("1.2.3", "## [Unreleased]\n## [1.2.3]\n", "has no YYYY-MM-DD date"),
        ("1.2.3", "## [1.2.3] - 2026-11-24\n## [Unreleased]\n", "must come before"),
    ],
)
def test_release_check(version, changelog, problem):
    problems = release.check(version, changelog)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def _installs_on(wheel: str, python: str) -> bool:
    from packaging.utils import parse_wheel_filename

    cp = "cp" + python.replace(".", "")
    for tag in parse_wheel_filename(wheel)[3]:
        platform_ok = tag.platform == "any" or "linux" in tag.platform
        if not platform_ok:
            continue
        if tag.interpreter in (cp, "py3", "py" + python.replace(".", "")) and tag.abi in (
            cp,
            "none",
        ):
            return True
        if tag.abi == "abi3" and tag.interpreter.startswith("cp3"):
            if int(tag.interpreter[3:]) <= int(cp[3:]):
                return True
    return False


@pytest.mark.parametrize("python", ["3.13", "3.14"])
def test_the_lock_has_a_linux_wheel_for_every_package_on_each_listed_python(python):
    # This machine has no Python 3.14 to run the suite on (CI's matrix does, from
    # versions.yaml); the lock at least installs there without building anything.
    from packaging.markers import Marker

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).parent.parent
    assert python in release.load_versions((root / "versions.yaml").read_text()).pythons
    lock = tomllib.loads((root / "uv.lock").read_text())
    env = {"python_full_version": f"{python}.0", "python_version": python}
    missing = []
    for package in lock["package"]:
        markers = package.get("resolution-markers")
        if markers and not any(Marker(m).evaluate(env) for m in markers):
            continue
        wheels = [w["url"].rsplit("/", 1)[1] for w in package.get("wheels", [])]
        if wheels and not any(_installs_on(w, python) for w in wheels):
            missing.append(f"{package['name']} {package['version']}")
    assert missing == []
