"""House rules 1 and 5, enforced: the domain imports only the standard library and itself,
services touch no framework or driver, and neither reads the clock on its own."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "jitaccess"
DOMAIN = sorted((SRC / "domain").glob("*.py"))
SERVICES = sorted((SRC / "services").glob("*.py"))
BANNED_IN_SERVICES = {"sqlalchemy", "fastapi", "psycopg", "httpx", "uvicorn"}
CLOCK_READS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
}


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(SRC)) for p in paths]


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import; relative ones resolve inside `root`."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                assert node.module is not None
                found.append((node.lineno, node.module))
    return found


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def clock_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    # `from time import time` or `from datetime import datetime as dt` must not hide a read.
    aliases = {
        alias.asname or alias.name: f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime")
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = f"{aliases[head]}.{rest}" if head in aliases and rest else aliases.get(head, name)
        parts = full.split(".")
        if len(parts) >= 2 and (parts[-2], parts[-1]) in CLOCK_READS:
            found.append(f"{path.name}:{node.lineno}: {name}()")
    return found


def test_the_domain_and_services_exist() -> None:
    assert len(DOMAIN) >= 5
    assert len(SERVICES) >= 5


@pytest.mark.parametrize("path", DOMAIN, ids=ids(DOMAIN))
def test_domain_imports_only_the_standard_library_and_itself(path: Path) -> None:
    offending = [
        f"{path.name}:{line}: {module}"
        for line, module in imported_modules(path)
        if module.split(".")[0] not in sys.stdlib_module_names
        and not (module == "jitaccess.domain" or module.startswith("jitaccess.domain."))
    ]
    assert offending == []


@pytest.mark.parametrize("path", SERVICES, ids=ids(SERVICES))
def test_services_import_no_framework_or_driver(path: Path) -> None:
    offending = [
        f"{path.name}:{line}: {module}"
        for line, module in imported_modules(path)
        if module.split(".")[0] in BANNED_IN_SERVICES
        or module.startswith(("jitaccess.adapters", "jitaccess.entrypoints"))
    ]
    assert offending == []


@pytest.mark.parametrize("path", DOMAIN + SERVICES, ids=ids(DOMAIN + SERVICES))
def test_domain_and_services_never_read_the_clock_themselves(path: Path) -> None:
    assert clock_reads(path) == []


def test_the_clock_read_detector_finds_every_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import datetime\n"
        "import time\n"
        "from datetime import datetime as dt, date\n"
        "from time import time as now\n"
        "a = datetime.datetime.now()\n"
        "b = dt.utcnow()\n"
        "c = time.time()\n"
        "d = now()\n"
        "e = date.today()\n"
        "f = dt.fromisoformat('2026-01-01')\n"
    )
    assert [hit.split(": ")[1] for hit in clock_reads(sample)] == [
        "datetime.datetime.now()",
        "dt.utcnow()",
        "time.time()",
        "now()",
        "date.today()",
    ]


def test_the_import_walker_sees_third_party_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "jitaccess" / "domain"
    package.mkdir(parents=True)
    sample = package / "sample.py"
    sample.write_text("import sqlalchemy.orm\nfrom . import model\nfrom ..ports import Clock\n")
    modules = [module for _, module in imported_modules(sample, tmp_path / "jitaccess")]
    assert modules == ["sqlalchemy.orm", "jitaccess.domain", "jitaccess.ports"]
