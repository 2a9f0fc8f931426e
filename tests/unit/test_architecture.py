"""docs/architecture.md is the map: every module under src/ is named in it, and the boundary
rules it states hold (one importer per dependency)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "wa_trio"


def test_every_module_is_named_in_the_map() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        name = path.name if path.parent == SRC else relative
        if path.name == "__init__.py" and path.parent != SRC:
            name = path.parent.relative_to(SRC).as_posix() + "/"
        if name == "__init__.py":
            continue
        if name not in text and relative not in text:
            missing.append(relative)
    assert missing == [], f"add these modules to docs/architecture.md: {missing}"


_TYPE_ONLY = re.compile(r"^if TYPE_CHECKING:.*?(?=^\S)", re.MULTILINE | re.DOTALL)


def _importers(module: str) -> set[str]:
    """Modules importing ``module`` at run time (type-only imports do not count)."""
    pattern = re.compile(rf"^\s*(import {module}\b|from {module}\b)", re.MULTILINE)
    return {
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if pattern.search(_TYPE_ONLY.sub("", path.read_text()))
    }


def test_one_boundary_module_per_dependency() -> None:
    assert _importers("serena") <= {"amqp.py", "serena_patch.py"}
    assert {p.split("/")[0] + "/" + p.split("/")[1] for p in _importers("neonize")} <= {
        "transport/neonize"
    }
    assert _importers("quart") | _importers("hypercorn") | _importers("quart_trio") <= {"web.py"}
    assert _importers("httpx") <= {"http_client.py"}
    assert _importers("magic") == {"sniff.py"}
    assert {p.split("/")[0] for p in _importers("psycopg")} == {"postgres"}
    assert _importers("werkzeug") <= {"web.py"}
