"""The milter's added CPU per tracked message: model/tracking.rewrite on a typical HTML
newsletter (about 30 KB of HTML, 40 links, multipart/alternative with a text part), against
parsing the same message with email.message_from_bytes in the same run (a baseline every
reader of the message pays).

    python3 bench/tracking.py [--links 40] [--size 30000] [--repeat 7] [--json out.json]

Variants (each the same document):
  parse           email.message_from_bytes(whole message): the baseline
  qp              rewrite, HTML part quoted-printable (the usual newsletter), signed tokens
                  (tracktokens.make_token, HMAC-SHA256): what the milter pays
  qp-plain-tokens the same with a trivial token function: the rewriter without the signing
  base64          rewrite, HTML part base64, signed tokens
  8bit            rewrite, HTML part 8bit, signed tokens
  untouched       rewrite of the qp message with every link marked data-mxhook-skip and no
                  pixel: the cost of reading a message that needs no change

Prints CPU µs per message (best of --repeat runs) and the ratio to the parse baseline; it does
not pass or fail. Pure CPU: no Postfix, no files.
"""
from __future__ import annotations

import argparse
import base64
import email
import json
import os
import platform
import quopri
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

from mxhook.model.message import header_section  # noqa: E402
from mxhook.model.tracking import Plan, rewrite  # noqa: E402
from mxhook.model.tracktokens import CLICK, Track, make_token  # noqa: E402
from rule_match import per_call  # noqa: E402  (CPU time per call, bench/ is on sys.path)

BASE = "https://t.example.com"
KEYS = (b"k" * 32,)


def newsletter(links: int, size: int, *, skip: bool = False) -> str:
    """HTML shaped like a Mailchimp/Sendinblue newsletter: nested tables, inline styles, one
    product block per link, a footer, padded to `size` characters with article text."""
    marker = " data-mxhook-skip" if skip else ""
    blocks = []
    for i in range(links):
        blocks.append(
            f'<tr>\n<td class="mcnTextContent" style="padding:9px 18px;color:#202020;font-family:Helvetica;'
            f'font-size:16px;line-height:150%;text-align:left;" valign="top">\n'
            f'<h3 style="margin:0;color:#202020;font-size:20px">Product {i}: something you will like</h3>\n'
            f'<p style="margin:10px 0">Our pick of the week, number {i}. '
            f'<a{marker} href="https://shop.example.com/products/{i}?utm_source=newsletter&amp;utm_medium=email'
            f'&amp;utm_campaign=december-2026&amp;utm_content=block{i}" target="_blank" '
            f'style="color:#007C89;font-weight:normal;text-decoration:underline">Read more</a></p>\n</td>\n</tr>\n')
    head = ('<!doctype html>\n<html xmlns="http://www.w3.org/1999/xhtml" xmlns:v="urn:schemas-microsoft-com:vml">\n'
            '<head><meta charset="UTF-8"><meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<title>December news</title>\n<style type="text/css">p{margin:10px 0;padding:0;} '
            'table{border-collapse:collapse;} h1,h2,h3{display:block;margin:0;padding:0;} '
            'img,a img{border:0;height:auto;outline:none;text-decoration:none;}</style>\n'
            '<!--[if mso]><style>.mcnTextContent{font-family:Arial}</style><![endif]-->\n</head>\n'
            '<body style="height:100%;margin:0;padding:0;width:100%">\n<center>\n'
            '<table align="center" border="0" cellpadding="0" cellspacing="0" height="100%" width="100%" id="bodyTable">\n')
    foot = ('<tr><td class="footer"><em>Copyright © 2026 Example Shop, all rights reserved.</em><br>\n'
            '<a href="*|UNSUB|*">unsubscribe</a> · <a href="mailto:news@example.com">contact</a></td></tr>\n'
            '</table>\n</center>\n</body>\n</html>\n')
    text = "".join(blocks)
    filler = []
    para = ('<tr><td style="padding:9px 18px"><p style="margin:10px 0">Lorem ipsum dolor sit amet, '
            'consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna '
            'aliqua. Grüße aus Köln.</p></td></tr>\n')
    while len(head) + len(text) + len(foot) + sum(map(len, filler)) < size:
        filler.append(para)
    return head + text + "".join(filler) + foot


def message(html_text: str, cte: str) -> bytes:
    data = html_text.encode("utf-8").replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        encoded = quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    elif cte == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    else:
        encoded = data
    text = b"December news\r\n\r\nProduct 0: https://shop.example.com/products/0\r\n"
    return (b"From: Shop <news@example.com>\r\nTo: <reader@example.org>\r\nSubject: December news\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"==b==\"\r\n\r\n"
            b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + text + b"\r\n--==b==\r\nContent-Type: text/html; charset=utf-8\r\n"
            + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode() + encoded + b"\r\n--==b==--\r\n")


def signed_token(kind: str, index: int | None, url: str | None) -> str:
    if kind == CLICK:
        return make_token(KEYS, Track(kind, "4Xy1Zq3kLmz", "", "example.com", 1796000000, index, url))
    return make_token(KEYS, Track(kind, "4Xy1Zq3kLmz", "", "example.com", 1796000000))


def plain_token(kind: str, index: int | None, url: str | None) -> str:
    return f"{kind}{index}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", type=int, default=40)
    ap.add_argument("--size", type=int, default=30_000, help="characters of HTML")
    ap.add_argument("--repeat", type=int, default=7, help="runs per variant; the best counts")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    doc = newsletter(args.links, args.size)
    messages = {cte: message(doc, cte) for cte in ("quoted-printable", "base64", "8bit")}
    skipped = message(newsletter(args.links, args.size, skip=True), "quoted-printable")

    def prepared(raw: bytes):
        fields, offset, _ = header_section(raw)
        return [(n, v.decode()) for n, v in fields], raw[offset:]

    def job(raw: bytes, token, **kw):
        headers, body = prepared(raw)
        plan = Plan(opens=kw.get("opens", True), clicks=True, text_links=False, honeypot=False,
                    base_url=BASE, token=token)
        result = rewrite(headers, body, plan)
        expect = kw.get("links", args.links)
        assert result.links == expect, (result.reason, result.links)
        return lambda: rewrite(headers, body, plan)

    qp = messages["quoted-printable"]
    variants = {
        "parse": lambda: email.message_from_bytes(qp),
        "qp": job(qp, signed_token),
        "qp-plain-tokens": job(qp, plain_token),
        "base64": job(messages["base64"], signed_token),
        "8bit": job(messages["8bit"], signed_token),
        "untouched": job(skipped, signed_token, opens=False, links=0),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeat):  # interleaved, so a burst of load hits every variant alike
        for name, func in variants.items():
            best[name] = min(best[name], per_call(func))
    print(f"python {platform.python_version()}, HTML {len(doc.encode())} bytes, {args.links} links, "
          f"message {len(qp)} bytes (qp), best of {args.repeat}")
    base = best["parse"]
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds * 1e6:9.0f} µs/message   x{seconds / base:5.2f} of parse")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"links": args.links, "html_bytes": len(doc.encode()), "message_bytes": len(qp),
                       "us_per_message": {k: round(v * 1e6, 1) for k, v in best.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
