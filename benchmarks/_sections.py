"""Write one script's section of a shared results file (between HTML comment markers), so
several benchmark scripts can fill docs/results/formats.md without overwriting each other."""

from __future__ import annotations

from pathlib import Path

from sparsecraft.atomic import write_text


def write_section(path: Path, name: str, body: str, title: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else f"# {title}\n\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(path, text)
