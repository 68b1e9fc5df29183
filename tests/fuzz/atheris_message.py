"""Coverage-guided fuzzing of the MIME normalizer and header decoding with atheris (libFuzzer).

    .venv/bin/python tests/fuzz/atheris_message.py [libFuzzer options] [CORPUS_DIR ...]
    e.g. ... -max_total_time=600 -rss_limit_mb=2048 /tmp/corpus tests/unit/fixtures/mime

Run by scripts/fuzz-long.sh. Any exception out of `message.normalize` (documented: never
raises), `headers.decode_value` or `headers.parse_addresses` is a crash; so is a result that
cannot be encoded as UTF-8 JSON (what the spooler's payload renderer does with it).
"""
from __future__ import annotations

import json
import os
import sys

import atheris

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "milter")]

with atheris.instrument_imports():
    from mxhook.model import headers
    from mxhook.model import message


def test_one_input(data: bytes) -> None:
    if not data:
        return
    selector, raw = data[0], data[1:]
    if selector % 4 == 0:  # header bytes (as the milter sees them) for the header functions
        headers.decode_value(raw)
        headers.parse_addresses(raw)
        text = raw.decode("utf-8", "surrogateescape")  # pymilter's way
        headers.decode_value(text)
        return
    result = message.normalize(raw, max_attachment_size=4096)
    json.dumps(result, ensure_ascii=False).encode("utf-8")
    if result["size"] != len(raw):
        raise AssertionError("size does not match the input")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
