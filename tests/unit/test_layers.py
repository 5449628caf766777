"""The package's layering (DESIGN.md §3), checked on the import statements themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "osp_server"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        # Storage knows tables and its own records, not protocol messages or HTTP.
        ("storage", ("osp_server.osp", "osp_server.web", "osp_server.app", "twisted.web")),
        # Call-leg rules are pure: no I/O, no reactor, no SQL.
        ("cdr", ("twisted", "sqlalchemy", "osp_server.storage", "osp_server.osp")),
        # The command-line tool does not reach into the composition root.
        ("admin", ("osp_server.app",)),
    ],
)
def test_layer_does_not_import(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in _modules(folder)
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


# Services may compose storage functions in one transaction (they see a Connection)
# and the CLI reports driver errors; only storage builds statements.
_ALLOWED_OUTSIDE_STORAGE = {("sqlalchemy", "Connection"), ("sqlalchemy.exc", "SQLAlchemyError")}


def test_only_storage_builds_sql() -> None:
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "storage" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                used = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                used = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            offenders.extend(
                f"{path.relative_to(PACKAGE)}: {module} {name}".strip()
                for module, name in used
                if module.split(".")[0] == "sqlalchemy"
                and (module, name) not in _ALLOWED_OUTSIDE_STORAGE
            )
    assert offenders == []
