"""What bounding every regex search costs the milter's rule matching: the current rules.py
against a baseline rules.py from git (default: the commit before every search carried
`timeout=`, when patterns judged linear by a hand tokenizer ran without the bound), measured in
the same run, interleaved, on the same rules and messages.

    python3 bench/rule_match.py [--baseline 6fe5a94] [--rules 100] [--repeat 7] [--json out.json]

Scenarios (RuleSet.match_many for one message, the milter's path at end of headers):

  tickets-catchall  bench/milter_throughput.py's rules: N-1 rules `Subject~^ticket-<i>\\b` and
                    `To~@ours\\.example$`, a catch-all `To~^bench@` last; Subject "bench message"
                    (the Subject prefilter rules out all N-1, one search settles them)
  tickets-hit       the same rules, Subject "ticket-<N/2> help": the prefilter finds a match,
                    so rules are searched one by one until rule N/2
  literal-last      N rules `To~^team<i>@ours\\.example$` (no quantifier: the baseline ran them
                    unbounded), recipient of the last one: the worst case, N To searches
  literal-none      the same rules, a recipient none matches (the To prefilter settles it)
  mixed-last        N rules, half with a quantifier (`Subject~^ticket-\\d+ for team<i>$`, bounded
                    in the baseline too) and half literal, the last one matching

Also a single search of a literal pattern with and without `timeout=` (the per-search cost:
the regex module reads the process CPU clock, two clock_gettime system calls, per search).

Prints µs per message (best of --repeat runs) and the ratio current / baseline; it does not
pass or fail. Nothing here touches Postfix or a database.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook.model import rules as current  # noqa: E402
from mxhook.model.targets import Destination  # noqa: E402

BASELINE = "6fe5a94"  # rules.py before every search was bounded


def load_baseline(rev: str):
    """rules.py as of `rev`, imported as a separate module (it imports only the stdlib and regex)."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:milter/mxhook/rules.py"],
                            check=True, capture_output=True).stdout
    with tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("rules_baseline", f.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


def scenarios(mod, n: int) -> dict:
    """name -> (RuleSet, recipients, headers, expected rule name or None)."""
    url = "https://hooks.example.net/in"
    where = Destination(url) if mod is current else url  # the baseline's Rule takes the URL

    def rule(name, priority, *conds):
        return mod.Rule(name, where, tuple(mod.parse_condition(c) for c in conds), priority=priority)

    tickets = [rule(f"t{i}", i, f"Subject~^ticket-{i}\\b", r"To~@ours\.example$") for i in range(1, n)]
    tickets.append(rule("all", n, r"To~^bench@ours\.example$"))
    literal = [rule(f"team{i}", i, f"To~^team{i}@ours\\.example$") for i in range(1, n + 1)]
    mixed = [rule(f"m{i}", i, f"Subject~^ticket-\\d+ for team{i}$" if i % 2 else f"To~^team{i}@ours\\.example$")
             for i in range(1, n + 1)]
    half = n // 2
    sets = {}

    def add(name, rule_list, rcpt, headers, expect):
        sets[name] = (mod.RuleSet(rule_list, regex_timeout=0.05), [rcpt], headers, expect)

    add("tickets-catchall", tickets, "bench@ours.example", {"subject": ["bench message"]}, "all")
    add("tickets-hit", tickets, "bench@ours.example", {"subject": [f"ticket-{half} help"]}, f"t{half}")
    add("literal-last", literal, f"team{n}@ours.example", {"subject": ["hello"]}, f"team{n}")
    add("literal-none", literal, "nobody@ours.example", {"subject": ["hello"]}, None)
    last = n if n % 2 == 0 else n - 1
    add("mixed-last", mixed, f"team{last}@ours.example", {"subject": ["ticket-7 for nobody"]}, f"m{last}")
    return sets


def per_call(func, budget: float = 0.2) -> float:
    """CPU seconds per call of func(), over a loop of about `budget` seconds (CPU time: the
    machine may be shared, and waiting for a core is not what is measured)."""
    loops = 1
    while True:
        start = time.process_time()
        for _ in range(loops):
            func()
        elapsed = time.process_time() - start
        if elapsed >= budget:
            return elapsed / loops
        loops *= 2 if elapsed > budget / 10 else 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline rules.py")
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=7, help="runs per variant; the best counts")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    baseline = load_baseline(args.baseline)
    variants = {"baseline": scenarios(baseline, args.rules), "current": scenarios(current, args.rules)}
    for variant in variants.values():
        for name, (rs, rcpts, headers, expect) in variant.items():
            got = [m.rule.name if m.rule else None for m in rs.match_many(rcpts, headers)]
            assert got == [expect], (name, got, expect)

    import regex
    search = regex.compile(r"^team42@ours\.example$", regex.IGNORECASE).search
    calls = {
        "search-literal": {"baseline": lambda: search("nobody@ours.example"),
                           "current": lambda: search("nobody@ours.example", timeout=0.05)},
    }
    for name in variants["current"]:
        calls[name] = {v: (lambda rs=variants[v][name][0], r=variants[v][name][1], h=variants[v][name][2]:
                           rs.match_many(r, h)) for v in variants}

    best: dict = {name: {"baseline": float("inf"), "current": float("inf")} for name in calls}
    for _ in range(args.repeat):  # interleaved, so load on a shared machine hits both alike
        for name, pair in calls.items():
            for v, func in pair.items():
                best[name][v] = min(best[name][v], per_call(func))

    print(f"rule matching, {args.rules} rules, best of {args.repeat}; baseline = rules.py at "
          f"{args.baseline}; Python {platform.python_version()}, regex {regex.__version__}")
    print(f"{'scenario':18} {'baseline µs':>12} {'current µs':>11} {'ratio':>6}")
    out = {}
    for name, times in best.items():
        b, c = times["baseline"] * 1e6, times["current"] * 1e6
        out[name] = {"baseline_us": round(b, 2), "current_us": round(c, 2), "ratio": round(c / b, 2)}
        print(f"{name:18} {b:12.2f} {c:11.2f} {c / b:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rules": args.rules, "baseline": args.baseline, "results": out}, f, indent=2)


if __name__ == "__main__":
    main()
