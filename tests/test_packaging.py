"""Packaging: environment.yml, pyproject.toml, README and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = _names(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip if not r.startswith("-e")]
    assert _names(listed) == expected
    assert "-e .[test]" in pip
    # Same version bounds too, not just the same names.
    assert sorted(listed) == sorted(
        project["dependencies"] + project["optional-dependencies"]["test"]
    )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- test-command -->\s*```\w*\n(.+?)\n```", readme, re.S).group(1)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_pair_example_runs():
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.+?)\n```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    pair = namespace["pair"]
    assert pair.update.online_steps == 1 and namespace["metrics"] == {
        "perf/replicate_steps_per_update": 0
    }


def test_readme_lists_every_registered_network():
    from hetero_lr import list_networks

    readme = (ROOT / "README.md").read_text()
    for name in list_networks("[!t]*"):
        assert f"| `{name}` |" in readme, name


def test_package_discovery_installs_analysis_and_the_study_package():
    """`analysis` ships with `hetero_lr` (it imports `hetero_lr.study.storage`)."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = set(find_packages(where=str(ROOT), **find["find"]))
    assert {"analysis", "hetero_lr", "hetero_lr.study", "hetero_lr.networks"} <= packages
    assert not packages & {"tests", "benchmarks", "studies"}


def test_console_scripts_name_importable_functions():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hetero-lr-study"] == "hetero_lr.study.cli:main"
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), target
