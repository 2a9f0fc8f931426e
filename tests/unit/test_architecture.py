"""docs/architecture.md is the map: every module under src/ is named in it, and the boundary
rules it states hold (one importer per dependency)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
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
    web = _importers("quart") | _importers("hypercorn") | _importers("quart_trio")
    assert {p.split("/")[0] for p in web} == {"web"}
    assert _importers("httpx") <= {"http_client.py"}
    assert _importers("magic") == {"media/sniff.py"}
    assert _importers("PIL") == {"media/images.py"}
    assert {"/".join(p.split("/")[:2]) for p in _importers("psycopg")} == {"stores/postgres"}
    assert {p.split("/")[0] for p in _importers("werkzeug")} <= {"web"}
    ffmpeg_callers = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(r"\"ff(mpeg|probe)\"", path.read_text())
    }
    assert ffmpeg_callers <= {"media/ffmpeg.py", "worker/startup.py", "cli/check.py"}


_IMPORT = re.compile(r"^\s*(?:from|import) wa_trio\.(\w+)", re.MULTILINE)
_IMPORT_NAME = re.compile(r"^\s*from wa_trio import (\w+)", re.MULTILINE)

#: the layers, lowest first (docs/architecture.md); a unit (a package, or a module at the top)
#: imports only units of its own layer's left or of a lower layer. Within a row, left to
#: right is the order too (``log`` writes private files with ``stores.files``).
LAYERS: list[list[str]] = [
    ["core"],
    ["config"],
    ["metrics", "http_client"],
    ["stores"],
    ["log"],
    ["bus"],
    ["transport"],
    ["media", "account_safety"],
    ["web", "events"],
    ["pipeline"],
    ["worker"],
    ["accounts"],
    ["run"],
    ["client", "cli", "__main__"],
]
_RANK = {
    unit: (row, column) for row, units in enumerate(LAYERS) for column, unit in enumerate(units)
}


def _imports_by_unit() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        unit = path.relative_to(SRC).parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        text = _TYPE_ONLY.sub("", path.read_text())
        used = set(_IMPORT.findall(text)) | set(_IMPORT_NAME.findall(text))
        edges.setdefault(unit, set()).update(used - {unit, "__version__"})
    return edges


def test_every_unit_has_a_layer() -> None:
    assert set(_imports_by_unit()) <= set(_RANK), "add the new package to LAYERS"


def test_no_import_runs_up_a_layer() -> None:
    """The allowed-imports table: each unit imports only units below it (so there are no
    circles between packages either)."""
    upward = [
        f"{unit} -> {used}"
        for unit, uses in sorted(_imports_by_unit().items())
        for used in sorted(uses)
        if _RANK[used] >= _RANK[unit]
    ]
    assert upward == []


_IO = ["trio", "serena", "psycopg", "httpx", "neonize", "quart", "quart_trio", "hypercorn"]
_IO += ["eliot", "prometheus_client", "sqlite3", "anyio"]
_PURE = [
    *sorted(
        "wa_trio." + p.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        for folder in ("core", "config")
        for p in (SRC / folder).glob("*.py")
        if p.name != "__init__.py"
    ),
    "wa_trio.transport.states",
    "wa_trio.transport.neonize.events",
    *(f"wa_trio.stores.{name}" for name in ("api_requests", "contacts", "numbers", "outbox")),
]


def test_the_pure_modules_import_no_io_library() -> None:
    """In a fresh interpreter (so nothing another test imported counts): each pure module,
    with its package ``__init__`` files, loads none of the I/O libraries."""
    probe = (
        "import importlib, sys, json\n"
        f"bad = set({_IO!r})\n"
        "found = {}\n"
        f"for name in {_PURE!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        "    hit = sorted({m.split('.')[0] for m in set(sys.modules) - before} & bad)\n"
        "    if hit: found[name] = hit\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(result.stdout) == {}
    assert len(_PURE) > 20  # the list is not empty by accident


#: modules that may choose a store themselves (read WHATSAPP_STORE): the switch, and the parts
#: that exist only on PostgreSQL (a lease, the lease table, a session's tables in the store)
_STORE_READERS = {
    "stores/open.py",  # the one switch
    "config/settings.py",  # the setting itself
    "run.py",  # a replica (a lease) or a local worker
    "accounts/replica.py",  # PostgreSQL only
    "accounts/lease.py",  # PostgreSQL only
    "accounts/balance.py",  # PostgreSQL only (the replica registry)
    "accounts/heartbeat.py",  # PostgreSQL only (the shared lease lines' heartbeats)
    "cli/accounts.py",  # `wa-trio accounts`: the lease table, or the session folders
    "cli/session_backup.py",  # whatsmeow's tables in either store
}
_READS_STORE = re.compile(r"settings\.store\b|self\.store is|wa_trio\.stores\.postgres")


def test_one_store_switch() -> None:
    readers = {
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if _READS_STORE.search(_TYPE_ONLY.sub("", path.read_text()))
    }
    readers = {r for r in readers if not r.startswith("stores/postgres/")}
    assert readers <= _STORE_READERS, (
        f"choose the store in stores/open.py: {readers - _STORE_READERS}"
    )


#: modules allowed over the cap, each with its reason (docs/decisions.md); the list may only shrink
_OVER_CAP = {"config/settings.py": 500}  # the settings table: 67 settings, one per variable


def test_module_size_caps() -> None:
    over = {}
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > _OVER_CAP.get(name, 400):
            over[name] = lines
    assert over == {}, f"split these modules (at most 400 lines): {over}"


def test_each_setting_is_declared_in_at_most_four_lines() -> None:
    tree = ast.parse((SRC / "config/settings.py").read_text())
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    spans = {
        ast.unparse(node.target): node.end_lineno - node.lineno + 1
        for node in settings.body
        if isinstance(node, ast.AnnAssign) and node.end_lineno is not None
    }
    assert len(spans) > 60
    assert {name: n for name, n in spans.items() if n > 4} == {}


def _started_names(call: ast.Call) -> str:
    """``nursery.start(parts.transport.run)`` -> "transport.run"; ``partial(fence, ...)`` ->
    "fence"; ``http_task`` -> "http_task"."""
    first = call.args[0]
    if isinstance(first, ast.Call):  # partial(f, ...)
        first = first.args[0]
    text = ast.unparse(first)
    return text.removeprefix("parts.")


def test_the_root_nursery_task_list_in_the_map_is_the_code() -> None:
    tree = ast.parse((SRC / "worker/app.py").read_text())
    supervise = next(
        n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "_supervise"
    )
    root = next(
        n
        for n in ast.walk(supervise)
        if isinstance(n, ast.AsyncWith) and "open_nursery" in ast.unparse(n.items[0])
    )
    starts = [
        n
        for n in ast.walk(ast.Module(body=root.body, type_ignores=[]))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and ast.unparse(n.func) in {"nursery.start", "nursery.start_soon"}
    ]
    in_code = [_started_names(n) for n in sorted(starts, key=lambda n: (n.lineno, n.col_offset))]
    doc = Path(__file__).parents[2] / "docs/architecture.md"
    section = doc.read_text().split("## The tasks of the root nursery")[1].split("\n## ")[0]
    in_docs = re.findall(r"^\d+\. `([^`]+)`", section, flags=re.MULTILINE)
    assert len(in_code) >= 10
    assert in_docs == in_code
