"""Copy the regenerated result tables into the README, between its results markers.

    python scripts/sync_readme_results.py [--readme README.md] [--results results]

Replaces everything between the lines ``<!-- results:begin -->`` and ``<!-- results:end -->``
with ``results/SUMMARY.md`` (headings one level down, under the README's "Results") and the
speed run (``results/speed.txt``), so the README shows the tables of the checkpoint that
``scripts/make_results.sh`` just scored (it runs this last). Exits with status 2 if a marker
or an input file is missing; the README is rewritten through a temporary file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def results_block(summary: str, speed: str) -> str:
    """The README's block: SUMMARY.md with every heading one level deeper, then the speed run."""
    lines = ["#" + line if line.startswith("#") else line for line in summary.rstrip("\n").splitlines()]
    lines += ["", "#### Speed (`results/speed.txt`, `python -m eval.bench_speed --threads 1 --rounds 3`)", "",
              "```", *speed.rstrip("\n").splitlines(), "```"]
    return "\n".join(lines) + "\n"


def sync(readme: str, block: str) -> str:
    """`readme` with the text between the markers replaced by `block`; ValueError without both markers in order."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"the README needs the lines {BEGIN} and {END}, in that order")
    head = readme[: start + len(BEGIN)]
    return head + "\n\n" + block + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default="README.md")
    p.add_argument("--results", default="results")
    args = p.parse_args(argv)
    readme, results = Path(args.readme), Path(args.results)
    try:
        block = results_block((results / "SUMMARY.md").read_text(), (results / "speed.txt").read_text())
        text = sync(readme.read_text(), block)
    except (OSError, ValueError) as e:
        print(f"sync_readme_results: {e}", file=sys.stderr)
        return 2
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)
    print(f"sync_readme_results: {readme} now shows {results / 'SUMMARY.md'} and {results / 'speed.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
