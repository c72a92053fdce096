"""The emulator must not share code with the client it is meant to check."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import airflow_provider_novita.emulator

EMULATOR_DIR = Path(airflow_provider_novita.emulator.__file__).parent
ALLOWED_THIRD_PARTY = {"fastapi", "starlette", "uvicorn", "httpx", "PIL", "pytest"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Level 1 is the emulator package itself; going further up would reach the client code.
            assert node.level in (0, 1), f"{path.name} imports from outside the emulator: {ast.unparse(node)}"
            if node.level == 0 and node.module is not None:
                roots.add(node.module.split(".")[0])
    return roots


def test_emulator_imports_only_the_stdlib_and_its_web_and_image_stack() -> None:
    sources = sorted(EMULATOR_DIR.glob("*.py"))
    assert len(sources) > 5

    for path in sources:
        foreign = imported_roots(path) - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY - {"__future__"}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"
