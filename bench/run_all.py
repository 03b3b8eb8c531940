"""Run every benchmark, one after another, and regenerate docs/performance.md from the results.

Each benchmark runs as its own process (`python -m bench.<module>`) under a hard time
limit; one that fails or overruns is recorded as not run, with the reason, and the others
still run. `--docs-only` regenerates the document from the existing bench/results/*.json.

Run: python -m bench.run_all [--only ingest,paging] [--docs-only]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import REPO, RESULTS_DIR, format_value, machine, run_module_bounded, utc_now_iso

DOC_PATH = REPO / "docs" / "performance.md"


# (result name, module, hard time limit in seconds)
BENCHMARKS: list[tuple[str, str, int]] = [
    ("ingest", "bench.ingest", 240),
    ("ingest_profile", "bench.profile_ingest", 240),
    ("paging", "bench.paging", 600),
    ("outbound_accept", "bench.outbound_accept", 240),
    ("dispatch", "bench.dispatch", 300),
    ("forwarding", "bench.forwarding", 240),
]


def run_benchmark(name: str, module: str, limit: int) -> None:
    """Run one benchmark; on failure write a result that says it did not run, and why."""
    print(f"\n=== {name} ({module}, at most {limit} s)", flush=True)
    started = time.monotonic()
    output, failure = run_module_bounded(module, limit, grace=60)
    print(output, flush=True)
    if failure is not None:
        write_failure(name, failure)
    print(f"=== {name}: {'failed' if failure else 'done'} in {time.monotonic() - started:.0f} s", flush=True)


def write_failure(name: str, reason: str) -> None:
    """Record a benchmark that could not run, so the document never shows stale figures as current."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {"name": name, "title": name, "met": False, "did_not_run": reason, "target": "",
                "checks": [], "figures": {}, "settings": {}, "notes": [], "machine": machine()}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def load_results() -> dict[str, dict[str, Any]]:
    """Return the result documents of the known benchmarks that exist."""
    results = {}
    for name, _, _ in BENCHMARKS:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results


def main() -> None:
    """Run the chosen benchmarks, then write docs/performance.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="comma-separated result names, e.g. ingest,paging")
    parser.add_argument("--docs-only", action="store_true", help="only regenerate docs/performance.md")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    if not args.docs_only:
        for name, module, limit in BENCHMARKS:
            if chosen is None or name in chosen:
                run_benchmark(name, module, limit)
    from bench.performance_doc import render

    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render(load_results(), utc_now_iso()))
    print(f"\nwritten: {DOC_PATH.relative_to(REPO)}")
    print(summary_table(load_results()))


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Return the one-line-per-target summary printed at the end of `make bench`."""
    from bench.common import table

    rows = []
    for name, result in results.items():
        if result.get("did_not_run"):
            rows.append((name, "did not run", "", "", "NOT RUN"))
        for check in result.get("checks", []):
            rows.append((name, check["name"], format_value(check["value"]), check["target"],
                         "met" if check["met"] else "NOT MET"))
    return "\n" + table(rows, ("benchmark", "figure", "measured", "target", ""))


if __name__ == "__main__":
    main()
