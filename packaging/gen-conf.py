#!/usr/bin/python3
"""Write the packaged /etc/mxhook/mxhook.conf from the code and the docs, and check it.

The file lists every key of `mxhook.config.DEFAULTS`, commented out with its built-in default,
under its section, with the first sentence of its meaning from docs/configuration.md above it.
So the conffile can never drift from the code: a key missing from the docs, or documented with
another default, is an error here and fails the package build.

    packaging/gen-conf.py OUTPUT      write OUTPUT, then check it

Checks on the written file (with `mxhook.config.load`, the daemons' own parser):
  - it parses, and as shipped (everything commented out) gives exactly DEFAULTS;
  - with every key uncommented it still parses, every value passes its typed getter, and it
    again gives exactly DEFAULTS (so each commented default is a valid value as written).

Run from the source tree root (debian/rules does); imports mxhook from ./milter (config.py is
stdlib only, so no build dependencies beyond python3).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import textwrap

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook import config  # noqa: E402

DOCS = os.path.join(ROOT, "docs", "configuration.md")
WIDTH = 79

HEADER = """\
# /etc/mxhook/mxhook.conf: settings of the mxhook daemons (mxhook-milter,
# mxhook-spooler) and of the mxhook command.
#
# Every key is listed below with its built-in default, commented out; uncomment
# a line to change it. Format: `key = value` lines in [sections]; a `#` starts
# a comment only at the beginning of a line. Sizes take a K, M or G suffix;
# booleans are yes or no. An unknown section or key is an error, so a typo
# never falls back to a default silently.
#
# Rules, permitted domains and endpoints are not set here: they live in
# rules.db and are managed with `mxhook` (see mxhook(1)). The full reference is
# configuration.md in /usr/share/doc/mxhook/.
#
# After a change: systemctl restart mxhook-milter mxhook-spooler
"""


def doc_meanings(path: str = DOCS) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, key) -> (documented default, first sentence of the meaning)."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    section = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"^##\s+`\[(\w+)\]`", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"^\|\s*`(\w+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$", line)
            if m and section:
                key, default, meaning = m.groups()
                found[(section, key)] = (_plain(default), _first_sentence(meaning))
    return found


def _plain(text: str) -> str:
    """Markdown cell → plain text: `code` → code, *(empty)* → empty."""
    text = text.strip()
    if re.fullmatch(r"\*\(empty\)\*", text):
        return ""
    return re.sub(r"`([^`]*)`", r"\1", text).replace("*", "")


def _first_sentence(text: str) -> str:
    """The meaning's first sentence: up to the first '.' that ends a sentence (followed by a
    capital or the end; 'e.g.' and 'i.e.' do not end one)."""
    text = _plain(text)
    for m in re.finditer(r"\.(?=\s+[A-Z(]|\s*$)", text):
        if not re.search(r"\b(?:e\.g|i\.e|etc)$", text[: m.start()]):
            return text[: m.start()] + "."
    return text.rstrip(".") + "."


def render() -> str:
    meanings = doc_meanings()
    problems = []
    out = [HEADER]
    for section, keys in config.DEFAULTS.items():
        out.append(f"[{section}]")
        for key, default in keys.items():
            doc = meanings.get((section, key))
            if doc is None:
                problems.append(f"[{section}] {key}: not documented in docs/configuration.md")
                continue
            doc_default, meaning = doc
            if doc_default != default:
                problems.append(f"[{section}] {key}: docs say default {doc_default!r}, "
                                f"config.py says {default!r}")
            out.extend(textwrap.wrap(meaning, WIDTH, initial_indent="# ",
                                     subsequent_indent="# ", break_on_hyphens=False))
            out.append(f"#{key} = {default}" if default else f"#{key} =")
            out.append("")
        out.append("")
    for section, key in meanings:
        if key not in config.DEFAULTS.get(section, {}):
            problems.append(f"[{section}] {key}: documented but not in config.DEFAULTS")
    if problems:
        raise SystemExit("gen-conf: docs/configuration.md and config.DEFAULTS disagree:\n  "
                         + "\n  ".join(problems))
    return "\n".join(out).rstrip("\n") + "\n"


def _typed_check(cfg: config.Config) -> None:
    """Every value through the getter the daemons use for it (ConfigError on a bad one)."""
    for section, keys in config.DEFAULTS.items():
        for key in keys:
            value = cfg.get(section, key)
            if value in ("yes", "no"):
                cfg.bool(section, key)
            elif re.fullmatch(r"\d+[KMG]", value):
                cfg.size(section, key)
            elif re.fullmatch(r"\d+", value):
                cfg.int(section, key)
            elif re.fullmatch(r"\d+\.\d+", value):
                cfg.float(section, key)


def check(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    shipped = config.load(path)
    if shipped.raw != config.DEFAULTS:
        raise SystemExit(f"gen-conf: {path} as shipped does not give the built-in defaults")
    uncommented = re.sub(r"^#(\w+ =)", r"\1", text, flags=re.M)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", encoding="utf-8") as tmp:
        tmp.write(uncommented)
        tmp.flush()
        every = config.load(tmp.name)
    if every.raw != config.DEFAULTS:
        diff = {(s, k): v for s, kv in every.raw.items() for k, v in kv.items()
                if config.DEFAULTS[s][k] != v}
        raise SystemExit(f"gen-conf: {path} with every key uncommented differs: {diff}")
    _typed_check(every)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "w", encoding="utf-8") as fh:
        fh.write(render())
    check(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
