"""Rewrite the configuration tables of README.md and docs/configuration.md from
wa_trio.config.settings.FIELDS (run after adding or changing a variable; a test checks both)."""

from pathlib import Path

from wa_trio.config.describe import markdown_table

ROOT = Path(__file__).resolve().parents[1]
for name in ("README.md", "docs/configuration.md"):
    path = ROOT / name
    text = path.read_text()
    start = text.index("| Variable | Default |")
    end = text.index("\n\n", start)
    path.write_text(text[:start] + markdown_table() + text[end:])
