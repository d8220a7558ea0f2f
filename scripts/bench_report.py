"""The results of a `make bench` run: start a run, print its table, publish it in the README.

python scripts/bench_report.py --reset      # before the benchmarks: an empty results file
python scripts/bench_report.py              # print var/bench/results.json as a table
python scripts/bench_report.py --publish    # copy it to docs/benchmarks.json and rewrite
                                            # the README's table from it
python scripts/bench_report.py --check      # exit 1 if the README's table is not
                                            # docs/benchmarks.json rendered (tests do this)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

import benchkit

README = benchkit.ROOT / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
HEADINGS = {
    "figure": "figure",
    "measured": "measured",
    "baseline": "baseline (same run)",
    "ratio": "ratio",
    "target": "target",
    "result": "result",
}


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:g}x"
    return str(value).replace("|", "\\|")


def render(document: dict[str, Any]) -> str:
    """The Markdown table of a results document, one row per figure in the order recorded."""
    figures: dict[str, dict[str, Any]] = document.get("figures", {})
    lines = [
        f"Run of {document.get('started_at', 'an unknown date')} "
        f"({len(figures)} figures; `docs/benchmarks.json`):",
        "",
        "| " + " | ".join(HEADINGS[name] for name in benchkit.FIELDS) + " |",
        "| " + " | ".join("---" for _ in benchkit.FIELDS) + " |",
    ]
    for figure in figures.values():
        lines.append("| " + " | ".join(_cell(figure.get(name)) for name in benchkit.FIELDS) + " |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--reset", action="store_true", help="start a run: an empty results file")
    action.add_argument("--publish", action="store_true", help="publish the run in the README")
    action.add_argument("--check", action="store_true", help="is the README's table published?")
    args = parser.parse_args(argv)
    if args.reset:
        benchkit.RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        benchkit.RESULTS_FILE.write_text(json.dumps({"started_at": started, "figures": {}}))
        return 0
    if args.check:
        document = json.loads(benchkit.PUBLISHED_FILE.read_text())
        if readme_table(README.read_text()) != render(document):
            print("the README's benchmark table is not docs/benchmarks.json", file=sys.stderr)
            return 1
        return 0
    if not benchkit.RESULTS_FILE.exists():
        print(f"no results: run `make bench` first ({benchkit.RESULTS_FILE})", file=sys.stderr)
        return 1
    document = json.loads(benchkit.RESULTS_FILE.read_text())
    print(render(document))
    if args.publish:
        shutil.copyfile(benchkit.RESULTS_FILE, benchkit.PUBLISHED_FILE)
        text = README.read_text()
        start, end = text.index(START) + len(START), text.index(END)
        README.write_text(text[:start] + "\n" + render(document) + "\n" + text[end:])
        print(f"published to {benchkit.PUBLISHED_FILE.relative_to(benchkit.ROOT)} and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
