"""Rewrite README.md's configuration table from wa_trio.config.FIELDS (run after adding one)."""

from pathlib import Path

from wa_trio.config import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text()
start = text.index("| Variable | Default |")
end = text.index("\n\n", start)
README.write_text(text[:start] + markdown_table() + text[end:])
