"""Run every benchmark and print one table: ``python benchmarks/run_all.py [NAME ...]``.

Each benchmark runs as its own process (exactly as when run by hand) and
writes ``benchmarks/results/<name>.json``; this script then prints one
Markdown table with every metric, its target and Orthanc's value where there is
one, and writes everything to ``benchmarks/results/latest.json`` (git-ignored).
Progress goes to stderr; a failing benchmark is reported and the others still run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: put the repo root, not benchmarks/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import shlex
import subprocess
import time
from typing import Any

from benchmarks.common import (
    PYTHON,
    RESULTS_DIR,
    ROOT,
    Metric,
    environment,
    log,
    markdown_table,
)

BENCHMARKS = {  # name -> timeout (s)
    "render": 150, "ingest": 180, "http": 330, "dicomweb": 240, "upstream": 240,
}


def run_one(name: str, timeout: float) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py``; return its exit status, duration and results."""
    result_file = RESULTS_DIR / f"{name}.json"
    result_file.unlink(missing_ok=True)
    argv = [PYTHON, str(ROOT / "benchmarks" / f"{name}.py")]
    log(f"=== {name}: {shlex.join(argv)}")
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{name}: over {timeout:.0f} s, stopping it")
        proc.terminate()  # the scripts stop their servers on SIGTERM
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    seconds = time.perf_counter() - start
    outcome: dict[str, Any] = {"returncode": proc.returncode, "seconds": round(seconds, 1)}
    if proc.returncode == 0 and result_file.exists():
        outcome["results"] = json.loads(result_file.read_text())
    else:
        outcome["output_tail"] = stdout[-2000:]
        log(f"{name}: FAILED (exit {proc.returncode})\n{stdout[-2000:]}")
    log(f"{name}: {seconds:.0f} s")
    return outcome


def other_load(scripts: dict[str, dict[str, Any]]) -> str:
    """One line on how much other processes disturbed the HTTP load runs, if they did."""
    details = scripts.get("http", {}).get("results", {}).get("details", {})
    runs = [run for server in ("ours", "orthanc")
            for run in details.get(server, {}).get("load", {}).values()]
    noise = details.get("noise", {})
    limit = noise.get("other_cores_flagged_above")
    if not runs or limit is None:
        return ""
    disturbed = [r for r in runs if (r.get("other_cores") or 0) > limit]
    generator = details.get("load_generator", "?")
    return (f"HTTP load generator: {generator}. Load runs with other processes using over "
            f"{limit:g} cores meanwhile: {len(disturbed)} of {len(runs)} "
            f"({noise.get('retries', 0)} re-run).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    names = args.names or list(BENCHMARKS)
    command = f"cd {shlex.quote(str(ROOT))} && {shlex.join([PYTHON, *sys.argv])}"
    env = environment()
    started = time.perf_counter()
    scripts = {name: run_one(name, BENCHMARKS[name]) for name in names}
    metrics: list[Metric] = []
    for outcome in scripts.values():
        for data in outcome.get("results", {}).get("metrics", []):
            metrics.append(Metric.from_dict(data))
    failed_scripts = [n for n, o in scripts.items() if "results" not in o]
    verdicts = [m.passed for m in metrics if m.passed is not None]
    summary = {
        "targets_met": sum(1 for v in verdicts if v),
        "targets_missed": sum(1 for v in verdicts if not v),
        "failed_benchmarks": failed_scripts,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    latest = RESULTS_DIR / "latest.json"
    latest.write_text(json.dumps({
        "command": command,
        "environment": env,
        "summary": summary,
        "metrics": [m.as_dict() for m in metrics],
        "benchmarks": scripts,
    }, indent=2, default=str) + "\n")

    print(f"Command: `{command}`\n")
    print(f"{env['date']}, git {env['git']}, Python {env['python']}, {env['cpus']} CPUs, "
          f"load average at start {env['loadavg']}\n")
    print(markdown_table(metrics))
    print(f"\nTargets met {summary['targets_met']}, missed {summary['targets_missed']}"
          + (f"; FAILED benchmarks: {', '.join(failed_scripts)}" if failed_scripts else "")
          + f"; {summary['seconds']:.0f} s in all.")
    noise = other_load(scripts)
    if noise:
        print(noise)
    print(f"Results: {latest.relative_to(ROOT)}")
    return 1 if failed_scripts else 0


if __name__ == "__main__":
    sys.exit(main())
