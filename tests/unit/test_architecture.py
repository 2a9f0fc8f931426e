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
    assert _importers("serena") <= {"bus/amqp.py", "bus/_serena_patch.py"}
    assert {p.split("/")[0] + "/" + p.split("/")[1] for p in _importers("neonize")} <= {
        "transport/neonize"
    }
    assert _importers("quart") | _importers("hypercorn") | _importers("quart_trio") <= {
        "web/app.py"
    }
    assert _importers("httpx") <= {"http_client.py"}
    assert _importers("magic") == {"media/sniff.py"}
    assert _importers("PIL") == {"media/sniff.py"}
    assert {"/".join(p.split("/")[:2]) for p in _importers("psycopg")} == {"stores/postgres"}
    assert _importers("werkzeug") <= {"web/app.py"}


_IMPORT = re.compile(r"^\s*(?:from|import) wa_trio\.(\w+)", re.MULTILINE)


def test_core_imports_no_layer_above_it() -> None:
    """core/ is the bottom layer: the pure rules import nothing of wa-trio's but core/ and
    config/ (the rest of the table is the open part of issue 28: see docs/decisions.md)."""
    for path in (SRC / "core").rglob("*.py"):
        text = _TYPE_ONLY.sub("", path.read_text())
        used = {match for match in _IMPORT.findall(text)}
        assert used <= {"core", "config"}, f"{path.relative_to(SRC)} imports {used}"
