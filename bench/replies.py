"""Stripped replies: the quality figure on the reply corpus (tests/data/replies/: correct strips /
total, per client style) and the time stripping adds per message, against parsing the message
alone (model/message.py normalize, which every inbound payload does already), same run.

    python3 bench/replies.py [--rounds 5] [--json out.json]

A strip is correct when stripped_text and stripped_signature (and stripped_html, for a message
with an HTML part) are what the corpus expects; the style is the case name up to its first `-`.
Times are the best of --rounds over the whole corpus; on a shared machine only the ratio
within one run counts. Prints figures; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook.model import replies  # noqa: E402
from mxhook.model.message import normalize  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "data", "replies")


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def load() -> list[tuple[str, bytes, tuple[str, str, str | None]]]:
    cases = []
    for name in sorted(n[:-4] for n in os.listdir(CORPUS) if n.endswith(".eml")):
        base = os.path.join(CORPUS, name)
        with open(base + ".eml", "rb") as f:
            raw = f.read()
        want = (_read(base + ".txt").removesuffix("\n"), (_read(base + ".sig") or "").removesuffix("\n"),
                _read(base + ".out.html"))
        cases.append((name, raw, want))
    return cases


def quality(cases) -> tuple[Counter, Counter, list[str]]:
    total, correct, misses = Counter(), Counter(), []
    for name, raw, (text, signature, html) in cases:
        style = name.split("-", 1)[0]
        msg = normalize(raw)
        got = replies.strip(msg["text"], msg["html"])
        ok = (got.text, got.signature) == (text, signature) and (html is None or got.html == html)
        total[style] += 1
        correct[style] += ok
        if not ok:
            misses.append(name)
    return total, correct, misses


def best(fn, rounds: int) -> float:
    out = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    cases = load()
    total, correct, misses = quality(cases)
    raws = [raw for _, raw, _ in cases]
    parsed = [normalize(raw) for raw in raws]

    def parse_only():
        for raw in raws:
            normalize(raw)

    def strip_only():
        for msg in parsed:
            replies.strip(msg["text"], msg["html"])

    t_parse, t_strip = best(parse_only, args.rounds), best(strip_only, args.rounds)
    n = len(cases)
    print(f"reply corpus: {sum(correct.values())}/{sum(total.values())} correct strips")
    for style in sorted(total):
        print(f"  {style:12} {correct[style]:3}/{total[style]}")
    if misses:
        print("  misses: " + ", ".join(misses))
    print(f"per message: parse (normalize) {t_parse / n * 1e6:.0f} us, strip {t_strip / n * 1e6:.0f} us "
          f"({t_strip / t_parse:.2f}x the parse), best of {args.rounds}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"correct": sum(correct.values()), "total": sum(total.values()),
                       "per_style": {s: [correct[s], total[s]] for s in sorted(total)}, "misses": misses,
                       "parse_us": t_parse / n * 1e6, "strip_us": t_strip / n * 1e6}, f, indent=1)


if __name__ == "__main__":
    main()
