"""Run notebooks in full mode (``QUICK = False``) headless and record their times: ``make notebooks-full``.

``python tests/run_notebooks_full.py [--timeout S] [--not-run NAME REASON] [NAME ...]`` runs the notebooks whose
names start with a NAME (all when none is given), one at a time, and merges them into
``data/notebooks_full_times.json``: per notebook its wall time, its status (``ok``; ``failed`` with the error;
``stopped`` when it ran past ``--timeout`` and its kernel was ended), its kernel's CPU time and the CPU model, the
date, the torch threads and compute conditions the notebook itself printed, and the load averages before and after
(a shared machine is slower: say so beside any time). Rows of notebooks not run this time are kept; ``not_run``
lists the notebooks without a row, with the reason given by ``--not-run`` if any. Each row is written as soon as its
notebook ends, so a long run can be stopped and read. Not a test: full mode takes minutes per notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "notebooks_full_times.json"
TARGET_S = 900  # the budget per notebook in full mode on 2 cores


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the kernels papermill started), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _printed_conditions(path: Path) -> str | None:
    """The first ``… torch thread(s) · … load …`` line the notebook printed (its live-measurement conditions)."""
    if not path.is_file():
        return None
    for cell in json.loads(path.read_text()).get("cells", []):
        for out in cell.get("outputs", []):
            for line in "".join(out.get("text", "")).splitlines():
                if re.search(r"\d+ torch threads? ·", line):
                    return line.strip()[:300]
    return None


def run_one(path: Path, out: Path, timeout: float | None) -> dict:
    """Run one notebook with ``QUICK=False``; ended (its kernel killed) after ``timeout`` seconds."""
    import papermill

    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        for child in _children(os.getpid()):  # the kernel this run started: papermill then raises DeadKernelError
            os.kill(child, signal.SIGKILL)

    timer = threading.Timer(timeout, stop) if timeout else None
    load_before, start, error = os.getloadavg(), time.perf_counter(), None
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    date = datetime.now(UTC).isoformat(timespec="seconds")
    if timer:
        timer.start()
    try:
        papermill.execute_notebook(str(path), str(out), parameters={"QUICK": False}, cwd=str(path.parent),
                                   kernel_name="python3", progress_bar=False)
    except Exception as exc:  # noqa: BLE001 - recorded, and the next notebook still runs
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    finally:
        if timer:
            timer.cancel()
    seconds = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, a child of this process, reaped at its end
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    status = "stopped" if stopped.is_set() else "ok" if error is None else "failed"
    return {"notebook": path.name, "status": status, "ok": status == "ok", "seconds": round(seconds, 1),
            "kernel_cpu_s": round(cpu_s, 1),
            "within_target": status == "ok" and seconds <= TARGET_S,
            "error": f"not completed: stopped after the {timeout:.0f} s limit" if status == "stopped" else error,
            "date_utc": date, "conditions": _printed_conditions(out), "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes (default: every notebook)")
    parser.add_argument("--timeout", type=float, default=None, help="end a notebook after this many seconds")
    parser.add_argument("--not-run", nargs=2, action="append", default=[], metavar=("NAME", "REASON"),
                        help="record why a notebook was not run (no run happens)")
    args = parser.parse_args(argv)
    import torch

    from lrdlab.measure.machine import machine_info

    every = sorted((ROOT / "notebooks").glob("*.ipynb"))
    todo = [p for p in every if args.names and any(p.stem.startswith(n) for n in args.names)]
    todo = todo if args.names else ([] if args.not_run else every)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    rows = {r["notebook"]: r for r in old.get("rows", [])}
    reasons = {r["notebook"]: r["reason"] for r in old.get("not_run", [])}
    reasons.update({p.name: reason for name, reason in args.not_run for p in every if p.stem.startswith(name)})
    result = {"what": "each notebook run headless with QUICK=False (papermill), wall time",
              "command": "make notebooks-full (python tests/run_notebooks_full.py [--timeout S] [NAME ...])",
              "target_s": TARGET_S, "machine": machine_info("cpu").to_dict(), "runner_threads": torch.get_num_threads(),
              "note": "2-core shared machine unless the machine says otherwise: other processes may have run "
                      "(see each row's load averages; a row's kernel_cpu_s, where present, is its kernel's CPU time, "
                      "all threads: beside the wall time it shows how much other work slowed it). machine is the "
                      "latest run's; a row's cpu, where present, names its own. The runner's torch threads are not "
                      "the notebooks': "
                      "each row's conditions line is what the notebook printed for its live measurements."}

    def write() -> None:
        done = [rows[p.name] for p in every if p.name in rows]
        missing = [{"notebook": p.name, "reason": reasons.get(p.name, "not run yet")} for p in every
                   if p.name not in rows]
        OUT.write_text(json.dumps({**result, "rows": done, "not_run": missing}, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for path in todo:
            rows[path.name] = {**run_one(path, Path(tmp) / path.name, args.timeout), "cpu": result["machine"]["cpu"]}
            reasons.pop(path.name, None)
            r = rows[path.name]
            print(f"{path.name}: {r['seconds']:.0f} s, {r['status']}{'' if r['ok'] else ': ' + str(r['error'])}"
                  f" (load {r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f})", flush=True)
            write()
    write()


if __name__ == "__main__":
    main(sys.argv[1:])
