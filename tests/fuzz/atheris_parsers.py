"""Coverage-guided fuzzing of the other pure parsers with atheris (libFuzzer): Postfix log lines,
spool files, rule conditions and the CSV writer.

    .venv/bin/python tests/fuzz/atheris_parsers.py [libFuzzer options] [CORPUS_DIR ...]

Run by scripts/fuzz-long.sh. The first input byte picks the target:

  0  maillog: `_parse_line` (parse_line without its catch-all) + Correlator.feed
  1  spool: `spool.decode` -> Record or SpoolError only
  2  rules: `parse_condition` -> Condition or RuleError; a parsed one is matched (regex timeout)
  3  csvexport: `write_csv` round-trips through csv.reader, no cell starts with a formula char
"""
from __future__ import annotations

import csv
import io
import os
import sys

import atheris

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "milter")]

with atheris.instrument_imports():
    from mxhook.services import csvexport
    from mxhook.postfix import maillog
    from mxhook.model import rules
    from mxhook.model.targets import Destination
    from mxhook import spool

NOW = 1_795_996_800
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def fuzz_maillog(fdp: atheris.FuzzedDataProvider) -> None:
    correlator = maillog.Correlator(max_messages=8)
    for i in range(fdp.ConsumeIntInRange(1, 8)):
        line = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
        p = maillog._parse_line(line, NOW)
        if p is not None:
            correlator.feed(p, f"k:{i}")


def fuzz_spool(fdp: atheris.FuzzedDataProvider) -> None:
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    if fdp.ConsumeBool():
        data = spool.MAGIC + data
    try:
        spool.decode(data)
    except spool.SpoolError:
        pass


def fuzz_rules(fdp: atheris.FuzzedDataProvider) -> None:
    spec = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    value = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    try:
        cond = rules.parse_condition(spec)
    except rules.RuleError:
        return
    rs = rules.RuleSet([rules.Rule("r", Destination("https://h.example/"), (cond,))],
                       regex_timeout=0.02)
    rs.match("in@ours.example", {cond.header: [value]})


def fuzz_csv(fdp: atheris.FuzzedDataProvider) -> None:
    columns = ["a", "b", "c"]
    rows = [{c: fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30)) for c in columns}
            for _ in range(fdp.ConsumeIntInRange(0, 5))]
    out = io.StringIO(newline="")
    csvexport.write_csv(rows, columns, out)
    back = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    want = [columns] + [[csvexport.safe_cell(r[c]) for c in columns] for r in rows]
    if back != want:
        raise AssertionError(f"csv round trip: {back!r} != {want!r}")
    for row in back[1:]:
        for cell in row:
            if cell.startswith(DANGEROUS):
                raise AssertionError(f"formula cell {cell!r}")


TARGETS = [fuzz_maillog, fuzz_spool, fuzz_rules, fuzz_csv]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fdp = atheris.FuzzedDataProvider(data[1:])
    TARGETS[data[0] % len(TARGETS)](fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
