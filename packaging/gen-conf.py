#!/usr/bin/python3
"""Write the packaged /etc/mxhook/mxhook.conf from the config schema, and check it and the docs.

The file lists every key of `mxhook.config.SCHEMA`, commented out with its built-in default,
under its section, with the key's one-line meaning above it. The key tables of
docs/configuration.md must agree with the schema (type, default, and the meaning's first
sentence): a disagreement fails the package build here, and tests/unit/test_config.py.

    packaging/gen-conf.py OUTPUT      write OUTPUT, then check it and the docs
    packaging/gen-conf.py --man OUTPUT   write the mxhook.conf(5) man page (every key with its
                                         type, default and the docs' whole meaning)

Checks on the written file (with `mxhook.config.load`, the daemons' own parser):
  - it parses, and as shipped (everything commented out) gives exactly DEFAULTS;
  - with every key uncommented it still parses, gives exactly DEFAULTS again, and every value
    passes its type and check (so each commented default is a valid value as written).

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


def doc_rows(path: str = DOCS) -> dict[str, list[tuple[str, str, str, str]]]:
    """section -> its table's rows (key, type, default, meaning), in the order documented."""
    found: dict[str, list[tuple[str, str, str, str]]] = {}
    section = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"^##\s+`\[(\w+)\]`", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"^\|\s*`(\w+)`\s*\|(.*)\|\s*$", line)
            if m and section:
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
                found.setdefault(section, []).append((m.group(1), *cells))
    return found


def doc_problems(path: str = DOCS) -> list[str]:
    """Where docs/configuration.md and the schema disagree: keys (and their order), types,
    defaults, and the first sentence of each meaning, which is the schema's one-line doc."""
    documented = doc_rows(path)
    problems = []
    for section, keys in config.SECTIONS.items():
        rows = documented.pop(section, [])
        if [row[0] for row in rows] != list(keys):
            problems.append(f"[{section}]: the docs list {[row[0] for row in rows]}, "
                            f"the schema {list(keys)}")
        for row in rows:
            key = keys.get(row[0])
            if key is None:
                continue
            if len(row) != 4:
                problems.append(f"[{section}] {row[0]}: not a `key | type | default | meaning` row")
                continue
            _, kind, default, meaning = row
            if kind != key.describe():
                problems.append(f"[{section}] {key.name}: docs say type {kind!r}, "
                                f"the schema {key.describe()!r}")
            if _plain(default) != key.default:
                problems.append(f"[{section}] {key.name}: docs say default {_plain(default)!r}, "
                                f"the schema {key.default!r}")
            if _first_sentence(meaning) != key.doc:
                problems.append(f"[{section}] {key.name}: the docs' meaning starts "
                                f"{_first_sentence(meaning)!r}, the schema's is {key.doc!r}")
    problems += [f"[{section}]: documented, but no such section" for section in documented]
    return problems


def _plain(text: str) -> str:
    """Markdown cell → plain text: `code` → code, *(empty)* → empty."""
    text = text.strip()
    if re.fullmatch(r"\*\(empty\)\*", text):
        return ""
    return re.sub(r"`([^`]*)`", r"\1", text).replace("*", "")


def _first_sentence(text: str) -> str:
    """The meaning's first sentence: up to the first '.' that ends a sentence (followed by a
    capital, a parenthesis, code or the end; 'e.g.' and 'i.e.' do not end one)."""
    for m in re.finditer(r"\.(?=\s+[A-Z(`]|\s*$)", text):
        if not re.search(r"\b(?:e\.g|i\.e|etc)$", text[: m.start()]):
            return _plain(text[: m.start()] + ".")
    return _plain(text).rstrip(".") + "."


def render() -> str:
    out = [HEADER]
    for section, keys in config.SECTIONS.items():
        out.append(f"[{section}]")
        for key in keys.values():
            out.extend(textwrap.wrap(key.doc, WIDTH, initial_indent="# ",
                                     subsequent_indent="# ", break_on_hyphens=False))
            out.append(f"#{key.name} = {key.default}" if key.default else f"#{key.name} =")
            out.append("")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


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
    problems = every.problems()
    if problems:
        raise SystemExit("gen-conf: a default fails its own check:\n  " + "\n  ".join(problems))


def _roff(text: str) -> str:
    """A docs table cell as man page text: markdown code/links/emphasis made plain roff."""
    text = text.replace("\\|", "|")
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # [text](link) -> text
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]*)`", lambda m: "\\fB" + m.group(1) + "\\fR", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = text.replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def render_man() -> str:
    """mxhook.conf(5): the conffile's format and every key, from the schema and the docs."""
    documented = {section: {row[0]: row for row in rows} for section, rows in doc_rows().items()}
    out = [
        '.TH MXHOOK.CONF 5 "" "mxhook" "File Formats"',
        ".SH NAME",
        "mxhook.conf \\- settings of the mxhook daemons and the mxhook command",
        ".SH SYNOPSIS",
        "/etc/mxhook/mxhook.conf",
        ".SH DESCRIPTION",
        "\\fBkey = value\\fR lines in [sections]; a \\fB#\\fR starts a comment only at the "
        "beginning of a line. Sizes take a K, M or G suffix; booleans are yes or no. An unknown "
        "section or key is an error, so a typo never falls back to a default silently. The "
        "packaged file lists every key, commented out, with its default.",
        ".PP",
        "Rules, permitted domains, endpoints and the block list are not set here: they live in "
        "rules.db and are managed with \\fBmxhook\\fR(1). After a change, restart the daemons "
        "that read the section (\\fBsystemctl restart mxhook\\-milter mxhook\\-spooler\\fR ...).",
        ".SH SETTINGS",
    ]
    for section, keys in config.SECTIONS.items():
        out.append(f".SS [{section}]")
        for key in keys.values():
            row = documented.get(section, {}).get(key.name)
            meaning = row[3] if row and len(row) > 3 else key.doc
            default = key.default if key.default != "" else "(empty)"
            out += [".TP", f"\\fB{key.name}\\fR ({_roff(key.describe())}; default "
                    f"\\fB{_roff(default)}\\fR)", _roff(meaning)]
    out += [
        ".SH FILES",
        "/etc/mxhook/mxhook.conf (or the file named by \\fB\\-\\-config\\fR or "
        "\\fBMXHOOK_CONFIG\\fR)",
        ".SH SEE ALSO",
        "\\fBmxhook\\fR(1), \\fBmxhook\\-milter\\fR(1), \\fBmxhook\\-spooler\\fR(1), "
        "\\fBmxhook\\-web\\fR(1), \\fBpostconf\\fR(5); configuration.md in "
        "/usr/share/doc/mxhook/",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--man":
        with open(argv[1], "w", encoding="utf-8") as fh:
            fh.write(render_man())
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    problems = doc_problems()
    if problems:
        raise SystemExit("gen-conf: docs/configuration.md and config.SCHEMA disagree:\n  "
                         + "\n  ".join(problems))
    with open(argv[0], "w", encoding="utf-8") as fh:
        fh.write(render())
    check(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
