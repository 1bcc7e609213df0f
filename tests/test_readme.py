"""The README's Python examples run as written (docs that cannot rot)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["./dev dashboard", "./dev test"]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_on_its_own(index):
    """Each block, pasted alone into a fresh Python, runs: it carries its own imports."""
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
