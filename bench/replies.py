"""Stripped replies: the quality figure on the reply corpus (tests/data/replies/: correct strips /
total, per client style) and the time stripping adds per message, against parsing the message
alone (model/message.py normalize, which every inbound payload does already) and against
rendering the whole native json body (payloads/registry.py render_inbound, stripping included),
same run; also for one large reply (--large-kb of text, quoted thread and HTML) and for the
5 KB new message bench/end_to_end.py sends.

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
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))
sys.path.insert(0, ROOT)

from mxhook.model import replies  # noqa: E402
from mxhook.model.message import normalize  # noqa: E402
from mxhook.model.rules import Rule  # noqa: E402
from mxhook.model.targets import Destination  # noqa: E402
from mxhook.payloads.registry import render_inbound  # noqa: E402
from templates import best_of as best  # noqa: E402
from tests.support.postfix import make_message  # noqa: E402

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


META = {"received": "2026-12-03T10:00:00.000000Z", "queue_id": "4XbQ1k2Lmz", "mail_from": "bob@builder.example",
        "client_addr": "192.0.2.1", "client_name": "mx.builder.example", "helo": "mx.builder.example",
        "header_from": "bob@builder.example", "subject": "Re: Contract review", "message_id": None,
        "deliveries": [{"recipients": ["support@ours.example"],
                        "rule": Rule(name="replies", destination=Destination("https://hooks.example/in")).target.to_record()}]}
TARGET = Rule(name="replies", destination=Destination("https://hooks.example/in")).target


def render(raw: bytes):
    return render_inbound("json", delivery_id="bench-replies", meta=META, raw=raw, target=TARGET,
                          recipients=["support@ours.example"])


def large_reply(kb: int) -> bytes:
    """A Gmail reply of about `kb` KB: a short answer over a long quoted thread, text and HTML."""
    line = "the numbers for the third quarter are in the attached sheet, see row 42"
    quoted = "".join(f"> {line} {i}\n" for i in range(kb * 1024 // 2 // (len(line) + 8)))
    text = f"Thanks, looks right.\n\nOn Thu, Dec 3, 2026 at 10:12 AM Alice <alice@example.org> wrote:\n\n{quoted}"
    html = ('<div dir="ltr">Thanks, looks right.</div><div class="gmail_quote"><blockquote class="gmail_quote">'
            + "".join(f"<div>{line} {i}</div>" for i in range(kb * 1024 // 2 // (len(line) + 14)))
            + "</blockquote></div>")
    return ("From: bob@builder.example\nTo: support@ours.example\nSubject: Re: numbers\nMIME-Version: 1.0\n"
            "Content-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n"
            f"{text}\n--b\nContent-Type: text/html; charset=utf-8\n\n{html}\n--b--\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-kb", type=int, default=1024)
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

    def render_all():
        for raw in raws:
            render(raw)

    t_parse, t_strip, t_render = best(parse_only, args.rounds), best(strip_only, args.rounds), best(render_all, args.rounds)
    big = large_reply(args.large_kb)
    big_msg = normalize(big)
    b_parse = best(lambda: normalize(big), args.rounds)
    b_strip = best(lambda: replies.strip(big_msg["text"], big_msg["html"]), args.rounds)
    b_render = best(lambda: render(big), args.rounds)
    plain = make_message(from_="Bench <bench@sender.example>", to="in@ours.example", subject="e2e bench", size=5000)
    plain_msg = normalize(plain)
    p_parse = best(lambda: [normalize(plain) for _ in range(100)], args.rounds) / 100
    p_strip = best(lambda: [replies.strip(plain_msg["text"], plain_msg["html"]) for _ in range(100)], args.rounds) / 100
    p_render = best(lambda: [render(plain) for _ in range(100)], args.rounds) / 100
    n = len(cases)
    print(f"reply corpus: {sum(correct.values())}/{sum(total.values())} correct strips")
    for style in sorted(total):
        print(f"  {style:12} {correct[style]:3}/{total[style]}")
    if misses:
        print("  misses: " + ", ".join(misses))
    print(f"per message: parse (normalize) {t_parse / n * 1e6:.0f} us, strip {t_strip / n * 1e6:.0f} us "
          f"({t_strip / t_parse:.2f}x the parse), native json render {t_render / n * 1e6:.0f} us "
          f"(strip {t_strip / t_render:.0%} of it), best of {args.rounds}")
    print(f"one {len(big) // 1024} KB reply: parse {b_parse * 1e3:.1f} ms, strip {b_strip * 1e3:.1f} ms "
          f"({b_strip / b_parse:.2f}x the parse), native json render {b_render * 1e3:.1f} ms "
          f"(strip {b_strip / b_render:.0%} of it)")
    print(f"one 5 KB new message (bench/end_to_end.py's): parse {p_parse * 1e6:.0f} us, strip {p_strip * 1e6:.0f} us "
          f"({p_strip / p_parse:.2f}x the parse), native json render {p_render * 1e6:.0f} us "
          f"(strip {p_strip / p_render:.0%} of it)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"correct": sum(correct.values()), "total": sum(total.values()),
                       "per_style": {s: [correct[s], total[s]] for s in sorted(total)}, "misses": misses,
                       "parse_us": t_parse / n * 1e6, "strip_us": t_strip / n * 1e6,
                       "render_us": t_render / n * 1e6, "large_bytes": len(big), "large_parse_ms": b_parse * 1e3,
                       "large_strip_ms": b_strip * 1e3, "large_render_ms": b_render * 1e3,
                       "plain_parse_us": p_parse * 1e6, "plain_strip_us": p_strip * 1e6,
                       "plain_render_us": p_render * 1e6}, f, indent=1)


if __name__ == "__main__":
    main()
