"""Run every fault drill, each bounded in time, then write docs/reliability.md from the results.

Each drill runs as its own process (`python -m drills.<module>`) under a hard time limit;
one that fails, crashes or overruns is recorded as failed, with the reason, and the others
still run. The exit status is non-zero when any drill did not hold.

Run: python -m drills.run [--only worker_kill,fuzz] [--docs-only]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import REPO, machine, run_module_bounded, table, without_log_lines
from drills.common import RESULTS_DIR

DOC_PATH = REPO / "docs" / "reliability.md"

# (result name, module, hard time limit in seconds); the limits add up to 14.5 minutes.
DRILLS: list[tuple[str, str, int]] = [
    ("worker_kill", "drills.worker_kill", 100),
    ("postgres_restart", "drills.postgres_restart", 100),
    ("emarsys_down", "drills.emarsys_down", 150),
    ("two_instances", "drills.two_instances", 220),
    ("fuzz", "drills.fuzz", 300),
]


def run_drill(name: str, module: str, limit: int) -> bool:
    """Run one drill; on a crash or overrun write a result that says so; return whether it held."""
    print(f"\n=== {name} ({module}, at most {limit} s)", flush=True)
    started = time.monotonic()
    output, failure = run_module_bounded(module, limit, grace=30)
    print(without_log_lines(output), flush=True)
    if failure is not None and not _wrote_result_since(name, started):
        write_failure(name, failure)
    held = failure is None
    print(f"=== {name}: {'held' if held else 'FAILED'} in {time.monotonic() - started:.0f} s", flush=True)
    return held


def _wrote_result_since(name: str, started_monotonic: float) -> bool:
    path = RESULTS_DIR / f"{name}.json"
    age = time.time() - path.stat().st_mtime if path.exists() else float("inf")
    return age <= time.monotonic() - started_monotonic


def write_failure(name: str, reason: str) -> None:
    """Record a drill that crashed or overran, so the document never shows stale figures as current."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {"name": name, "title": name, "held": False, "did_not_finish": reason, "tried": [],
                "checks": [], "figures": {}, "settings": {}, "notes": [], "machine": machine()}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def load_results() -> dict[str, dict[str, Any]]:
    """Return the result documents of the known drills that exist."""
    results = {}
    for name, _, _ in DRILLS:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Return one line per check of every drill, as printed at the end of `make drills`."""
    rows = []
    for name, result in results.items():
        if result.get("did_not_finish"):
            rows.append((name, "did not finish", result["did_not_finish"][:60], "", "FAILED"))
        for item in result.get("checks", []):
            rows.append((name, item["name"], item["value"], item["target"], "held" if item["met"] else "FAILED"))
    return table(rows, ("drill", "check", "measured", "must be", ""))


def main() -> int:
    """Run the chosen drills, write docs/reliability.md, print the summary; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="comma-separated drill names, e.g. worker_kill,fuzz")
    parser.add_argument("--docs-only", action="store_true", help="only regenerate docs/reliability.md")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    held = True
    if not args.docs_only:
        for name, module, limit in DRILLS:
            if chosen is None or name in chosen:
                held = run_drill(name, module, limit) and held
    from drills.reliability_doc import render

    results = load_results()
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render(results))
    print(f"\nwritten: {DOC_PATH.relative_to(REPO)}\n\n{summary_table(results)}")
    print(f"\n{'every drill run held' if held else 'at least one drill FAILED'}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
