"""What the benchmarks share: markdown tables, the command line that reproduces a report, and
writing it."""

from __future__ import annotations

from pathlib import Path


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def make_command(target: str, overrides: list[str]) -> str:
    return f"make {target}" + (f' ARGS="{" ".join(overrides)}"' if overrides else "")


def publish(text: str, out: Path) -> None:
    """Write out/report.md and print it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    print(text)
    print(f"written to {out / 'report.md'}")
