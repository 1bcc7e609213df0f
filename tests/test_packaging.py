"""environment.yml, binder/ and pyproject.toml must describe the same environment (no drift).

pyproject.toml says *what* the notebooks and the dashboard need (core + ``dashboard`` extra),
constraints.txt pins *which versions*; the conda and Binder files must list exactly those packages
at exactly those pins, with torch from the CPU-only index.
"""

import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _needed():
    """name → Requirement for the core dependencies plus the ``dashboard`` extra, recursively."""
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    reqs, todo = {}, ["dashboard"]
    for line in project["dependencies"]:
        reqs[canonicalize_name(Requirement(line).name)] = Requirement(line)
    while todo:
        for line in extras[todo.pop()]:
            req = Requirement(line)
            if canonicalize_name(req.name) == "hessviz":
                todo.extend(req.extras)
            else:
                reqs[canonicalize_name(req.name)] = req
    return reqs


def _pins(lines):
    """name → version for ``name==version`` lines; other lines are returned separately."""
    pins, other = {}, []
    for raw in lines:
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        if m:
            pins[canonicalize_name(m[1])] = m[2]
        else:
            other.append(line)
    return pins, other


def _constraints():
    return _pins((ROOT / "constraints.txt").read_text().splitlines())[0]


def _environment_yml():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    return env, conda, pip


def _binder_requirements():
    return (ROOT / "binder" / "requirements.txt").read_text().splitlines()


SOURCES = {
    "environment.yml": lambda: _pins(_environment_yml()[2]),
    "binder/requirements.txt": lambda: _pins(_binder_requirements()),
}


@pytest.mark.parametrize("source", SOURCES)
def test_lists_exactly_the_dependencies_of_pyproject(source):
    pins, _ = SOURCES[source]()
    assert sorted(pins) == sorted(_needed()), f"{source} and pyproject.toml list different packages"


@pytest.mark.parametrize("source", SOURCES)
def test_pins_equal_the_lock_and_satisfy_pyproject(source):
    pins, _ = SOURCES[source]()
    lock, needed = _constraints(), _needed()
    for name, version in pins.items():
        assert version == lock.get(name), f"{source}: {name}=={version}, lock: {lock.get(name)}"
        assert needed[name].specifier.contains(version), f"{source}: {name} vs {needed[name]}"


@pytest.mark.parametrize("source", SOURCES)
def test_torch_comes_from_the_cpu_index(source):
    _, other = SOURCES[source]()
    assert f"--extra-index-url {CPU_INDEX}" in other, f"{source} would install the CUDA torch wheel"


def test_conda_env_installs_the_checkout_with_the_same_python():
    env, conda, pip = _environment_yml()
    assert "-e ." in pip
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"], "use pip for packages"
    conda_python = next(d.split("=")[1] for d in conda if d.startswith("python="))
    binder_python = (ROOT / "binder" / "runtime.txt").read_text().strip().removeprefix("python-")
    assert conda_python == binder_python
    assert Requirement(f"python{_pyproject()['project']['requires-python']}").specifier.contains(
        Version(conda_python + ".0")
    )


def test_binder_installs_the_checkout_explicitly():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "repo2docker runs postBuild only if it is executable"
    assert "pip install --no-deps" in post_build.read_text() and " -e ." in post_build.read_text()
    # The Jupyter server configuration tests/test_dashboard_binder.py serves with, in the place a
    # Jupyter server reads it from.
    assert "cp binder/jupyter_server_config.json" in post_build.read_text()
    assert "/etc/jupyter/jupyter_server_config.d" in post_build.read_text()
    # repo2docker uses binder/ alone; a second environment file there would shadow requirements.txt.
    binder_files = {p.name for p in (ROOT / "binder").iterdir()}
    assert not {"environment.yml", "setup.py", "Pipfile"} & binder_files


def test_voila_config_hides_code_and_tracebacks():
    import json

    conf = json.loads((ROOT / "voila.json").read_text())["VoilaConfiguration"]
    assert conf["show_tracebacks"] is False and conf["strip_sources"] is True


def test_the_wheel_ships_the_figure_widgets_browser_code(tmp_path):
    """``pip install .`` (not only ``-e .``) must carry PlotWidget's browser code."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"  # a copy: setuptools writes build/ and egg-info next to the sources
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "hessviz", source / "hessviz", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path), str(source)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("hessviz-*.whl")
    assert "hessviz/widgets/figure_widget.js" in zipfile.ZipFile(wheel).namelist()
