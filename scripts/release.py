"""Image tags and release checks, from pyproject.toml's version and versions.yaml.

    uv run python scripts/release.py tags [--image NAME] [--python 3.X]   # one tag per line
    uv run python scripts/release.py matrix                               # JSON for CI
    uv run python scripts/release.py check                                # validate a release

Tags per Python: ``latest-py3.X`` and ``VERSION-py3.X``; the default Python also gets
``latest`` and ``VERSION``. ``check`` requires a ``MAJOR.MINOR.PATCH`` version and a CHANGELOG
with an ``[Unreleased]`` section above ``## [VERSION] - YYYY-MM-DD``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "dailyco/pipecat-base"
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Versions:
    pythons: list[str]
    default: str
    deprecated: list[str]


def project_version(pyproject: str) -> str:
    """``[project] version`` from pyproject.toml text (no TOML parser on Python 3.10)."""
    section = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", pyproject, re.MULTILINE | re.DOTALL)
    match = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.MULTILINE)
    if not match:
        raise ValueError("pyproject.toml has no [project] version")
    return match.group(1)


def load_versions(text: str) -> Versions:
    base = yaml.safe_load(text)["base"]
    pythons = [str(p) for p in base["python_versions"]]
    default = str(base["default_python"])
    if default not in pythons:
        raise ValueError(f"default_python {default} is not one of python_versions {pythons}")
    return Versions(pythons, default, [str(p) for p in base.get("deprecated_python_versions", [])])


def tags(version: str, python: str, versions: Versions, image: str = DEFAULT_IMAGE) -> list[str]:
    """Every tag the image built for ``python`` is pushed under."""
    names = [f"latest-py{python}", f"{version}-py{python}"]
    if python == versions.default:
        names += ["latest", version]
    return [f"{image}:{name}" for name in names]


def check(version: str, changelog: str) -> list[str]:
    """What keeps ``version`` from being released; empty when it may be."""
    problems = []
    if not VERSION_RE.match(version):
        problems.append(f"version {version!r} is not MAJOR.MINOR.PATCH")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\S+))?", changelog, re.MULTILINE)
    names = [h[0] for h in headings]
    if "Unreleased" not in names:
        problems.append("CHANGELOG.md has no ## [Unreleased] section")
    release = next((h for h in headings if h[0] == version), None)
    if release is None:
        problems.append(f"CHANGELOG.md has no ## [{version}] - YYYY-MM-DD section")
    elif not re.fullmatch(r"\d{4}-\d{2}-\d{2}", release[1] or ""):
        problems.append(f"CHANGELOG.md's [{version}] section has no YYYY-MM-DD date")
    elif "Unreleased" in names and names.index("Unreleased") > names.index(version):
        problems.append(f"CHANGELOG.md's [Unreleased] section must come before [{version}]")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tag_parser = sub.add_parser("tags", help="print the image tags")
    tag_parser.add_argument("--image", default=DEFAULT_IMAGE)
    tag_parser.add_argument("--python", help="only this Python version")
    sub.add_parser("matrix", help="print the build matrix as JSON")
    sub.add_parser("check", help="validate the version and CHANGELOG for a release")
    options = parser.parse_args(argv)

    version = project_version((ROOT / "pyproject.toml").read_text())
    versions = load_versions((ROOT / "versions.yaml").read_text())
    if options.command == "tags":
        pythons = [options.python] if options.python else versions.pythons
        for python in pythons:
            print("\n".join(tags(version, python, versions, options.image)))
    elif options.command == "matrix":
        print(json.dumps({"python": versions.pythons}))
    else:
        problems = check(version, (ROOT / "CHANGELOG.md").read_text())
        for problem in problems:
            print(f"release check: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
