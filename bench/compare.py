"""Before/after in one run: the four benches for a git revision and for the working tree.

    python3 bench/compare.py REV [--rounds 2] [--quick] [--only end_to_end,events] [--json out.json]

REV is exported (`git archive`) into a temporary directory with its own venv (system site
packages, the tree installed editable without dependencies), so each side runs its own code and
its own daemons (the tests' harness starts the console scripts next to the venv's python). Each
side runs its own bench scripts, so the package layout may differ between them (the "layers"
commit moved the modules); bench/end_to_end.py is copied from the working tree when REV has
none (it uses only tests/support and the `mxhook` command line). The working tree runs with its
`.venv` when there is one.

The benches run interleaved, REV then working tree, then the other way round in the next round,
so drift in the machine's load touches both sides alike; each figure is the median over the
rounds. Prints one table: figure, REV, working tree, working tree / REV. The private-Postfix
benches (milter_throughput, end_to_end) need root.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# bench -> (arguments, quick arguments)
ARGS = {
    "milter_throughput": (["--rounds", "1", "--messages", "1000", "--latency-messages", "60",
                           "--warmup", "100"], ["--quick"]),
    "events": (["--events", "100000", "--skip-backlog"], ["--events", "20000", "--skip-backlog"]),
    "logfollow": (["--lines", "200000", "--rounds", "3"], ["--lines", "50000", "--rounds", "1",
                                                           "--spool-lines", "5000"]),
    "end_to_end": (["--messages", "1000", "--sessions", "10"], ["--messages", "300", "--warmup", "50"]),
}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def figures(bench: str, data: dict) -> dict[str, float | None]:
    """The figures of one run's JSON that the table shows (higher is better unless noted)."""
    if bench == "milter_throughput":
        rate = data["rate"]
        res = data["results"]

        def cpu(c):
            return _median([r["milter_user_ms"] + r["milter_sys_ms"] for r in res[c]["runs"]])
        return {"(a) bare Postfix msg/s": rate["a"], "(b) null milter msg/s": rate["b"],
                "(c) mxhook msg/s": rate["c"], "(d) mxhook --discard msg/s": rate["d"],
                "c/b": rate["c"] / rate["b"], "c/a": rate["c"] / rate["a"],
                "milter CPU ms/msg (c), lower is better": cpu("c"),
                "mxhook's own CPU c-b ms/msg, lower is better": cpu("c") - cpu("b")}
    if bench == "events":
        flow = data["flow"]
        return {"flow events/s": flow["events_per_s"],
                "bare POST events/s (ceiling)": data["baseline"]["bare_post_events_per_s"],
                "flow / bare POST": flow["events_per_s"] / data["baseline"]["bare_post_events_per_s"],
                "spooler CPU µs/event, lower is better": flow["cpu_user_us"] + flow["cpu_sys_us"]}
    if bench == "logfollow":
        out = {f"{name} lines/s": rate for name, rate in data["rates"].items()}
        if "follower" in data:
            out["follower file->spool lines/s"] = data["follower"]["lines_per_s"]
        return out
    if bench == "end_to_end":
        f = data["figures"]
        return {"SMTP-phase msg/s": f["smtp_rate"], "end-to-end msg/s": f["e2e_rate"],
                "e2e / smtp (target >= 0.95)": f["ratio"],
                "latency p50 ms, lower is better": f["p50_ms"],
                "latency p99 ms (target <= 1000), lower is better": f["p99_ms"],
                "baseline SMTP msg/s (no spooler)": f.get("baseline_smtp_rate")}
    raise ValueError(bench)


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def export(rev: str, dest: str) -> str:
    """REV's tree in `dest` (git archive), with a venv; returns its python."""
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", rev + "^{commit}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(dest)
    archive = subprocess.Popen(["git", "-C", ROOT, "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {rev} failed")
    if not os.path.exists(os.path.join(dest, "bench", "end_to_end.py")):
        shutil.copy(os.path.join(HERE, "end_to_end.py"), os.path.join(dest, "bench"))
    return make_venv(dest, os.path.join(dest, ".venv"))


def make_venv(tree: str, venv: str) -> str:
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv])
    run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-deps", "--no-build-isolation",
         "-e", tree], stdout=subprocess.DEVNULL)
    return os.path.join(venv, "bin", "python")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the git revision to compare the working tree with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small runs (a smoke test of the figures)")
    ap.add_argument("--only", help="comma-separated benches (default: all four)")
    ap.add_argument("--json", help="also write every figure of every run here")
    ap.add_argument("--keep", action="store_true", help="keep the exported tree and the outputs")
    args = ap.parse_args(argv)
    benches = args.only.split(",") if args.only else list(ARGS)
    for b in benches:
        if b not in ARGS:
            raise SystemExit(f"unknown bench {b!r}; one of {', '.join(ARGS)}")

    tmp = tempfile.mkdtemp(prefix="mxhook-compare-")
    os.chmod(tmp, 0o755)
    try:
        work_python = os.path.join(ROOT, ".venv", "bin", "python")
        if not os.path.exists(work_python):
            work_python = make_venv(ROOT, os.path.join(tmp, "work-venv"))
        sides = {args.rev: (export(args.rev, os.path.join(tmp, "rev")), os.path.join(tmp, "rev")),
                 "working tree": (work_python, ROOT)}
        order = list(sides)
        results: dict[str, dict[str, list[dict]]] = {b: {s: [] for s in sides} for b in benches}
        for r in range(args.rounds):
            for bench in benches:
                for side in (order if r % 2 == 0 else order[::-1]):
                    python, tree = sides[side]
                    out = os.path.join(tmp, f"{bench}-{r}-{'rev' if side == args.rev else 'work'}.json")
                    extra = ARGS[bench][1 if args.quick else 0]
                    print(f"\n=== round {r + 1}: {bench} on {side} ({time.strftime('%H:%M:%S')}, "
                          "load %.2f)" % os.getloadavg()[0], flush=True)
                    try:
                        run([python, os.path.join(tree, "bench", f"{bench}.py"), *extra, "--json", out],
                            cwd=tree)
                    except subprocess.CalledProcessError as exc:  # a flaky run costs one figure
                        print(f"!!! {bench} on {side} failed (exit {exc.returncode}): left out",
                              flush=True)
                        continue
                    with open(out) as fh:
                        results[bench][side].append(figures(bench, json.load(fh)))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmedians of {args.rounds} round(s), interleaved; {os.cpu_count()} CPUs, "
          "load at the end %.2f" % os.getloadavg()[0])
    width = max([len(name) for b in benches for runs in results[b].values() if runs
                 for name in runs[0]] or [10]) + 2
    print(f"{'figure':<{width}} {args.rev[:12]:>12} {'working tree':>13} {'ratio':>7}")
    table = {}
    for bench in benches:
        runs = {side: len(results[bench][side]) for side in sides}
        print(f"bench/{bench}.py" + ("" if set(runs.values()) == {args.rounds} else
                                     f"  (runs that finished: {runs})"))
        names = next((r[0] for r in results[bench].values() if r), {})
        for name in names:
            before = _median([run.get(name) for run in results[bench][args.rev]])
            after = _median([run.get(name) for run in results[bench]["working tree"]])
            ratio = after / before if before and after is not None else None
            table[f"{bench}: {name}"] = (before, after)
            print(f"  {name:<{width - 2}} {_fmt(before):>12} {_fmt(after):>13} "
                  f"{'' if ratio is None else f'{ratio:.3f}':>7}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rev": args.rev, "rounds": args.rounds, "table": table, "runs": results}, fh, indent=1)
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
