"""constraints.txt pins the environment CI passed with; it must agree with pyproject.toml and the Makefile."""
import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: not a 'name==version' pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = Version(version)
    return pins


def test_every_declared_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _pins()
    assert "paperzoo" not in pins, "constraints.txt must not pin the project itself"
    for text in declared:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is a dependency but constraints.txt has no pin for it (run `make lock`)"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[key]}, outside pyproject.toml's '{req.specifier}'")


def test_makefile_installs_the_pinned_versions():
    makefile = (ROOT / "Makefile").read_text()
    pins = _pins()
    named = re.findall(r"\b(torch|torchvision|recbole)==([0-9][^\s']*)", makefile)
    assert {name for name, _ in named} == {"torch", "torchvision", "recbole"}
    for name, version in named:
        assert pins[name] == Version(version), f"Makefile installs {name}=={version}, constraints.txt pins {pins[name]}"
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "$(PIN)" in makefile
