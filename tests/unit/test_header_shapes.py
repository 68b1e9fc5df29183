"""The payload's header section is the one Postfix passed the milter, whose decision saw it
(decision.header_index over the header callbacks): message.normalize splits headers from
body as Postfix does, both on the message as the client sent it and as the milter spools it.
The table of shapes (tests/support/header_shapes.py) is checked against the real Postfix by
tests/e2e/test_payload_shapes.py."""
import base64

import pytest

from mxhook.model.decision import header_index
from mxhook.model.headers import decode_value
from mxhook.model.message import normalize, split_headers
from tests.support.header_shapes import SHAPES, SPLITTER_VERSION

AS_SPLIT = [s for s in SHAPES if s.applies_to(SPLITTER_VERSION)]


@pytest.mark.parametrize("shape", AS_SPLIT, ids=lambda s: s.id)
def test_split_headers_gives_what_postfix_passes_the_milter(shape):
    assert split_headers(shape.raw)[0] == shape.headers


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("as_", ["sent", "spooled"])
def test_payload_headers_equal_the_decisions_headers(shape, as_):
    if as_ == "sent" and shape not in AS_SPLIT:
        pytest.skip("the splitter reads a message as sent as Postfix 3.7 does")
    m = normalize(shape.raw if as_ == "sent" else shape.as_milter_spools())
    index = header_index(shape.headers)
    assert [(h["name"], h["value"]) for h in m["headers"]] == [(n, decode_value(v)) for n, v in shape.headers]
    assert {h["name"].lower() for h in m["headers"]} == set(index)
    assert m["from"] == [] or "from" in index
    assert m["subject"] is None or "subject" in index
    assert m["date"] is None or "date" in index
    assert m["text"] == shape.body.decode("utf-8").replace("\r\n", "\n")


def test_a_mime_structure_in_a_body_without_header_section_is_body_text():
    raw = b" \r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--\r\n"
    m = normalize(raw)
    assert m["attachments"] == [] and m["text"] == raw.decode().replace("\r\n", "\n")
    assert m["defects"] == [
        "the first line starts with white space: no header section (the whole message is body, as Postfix reads it)"]


def test_an_obs_field_content_type_is_read_as_postfix_reads_it():
    raw = (b"Content-Type : multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nUE5H\r\n--b--\r\n")
    m = normalize(raw)
    assert m["headers"] == [{"name": "Content-Type", "value": "multipart/mixed; boundary=b"}]
    assert m["text"] == "hi" and base64.b64decode(m["attachments"][0]["content"]) == b"PNG"


def test_a_bare_cr_in_a_field_starts_no_field_for_the_mime_parser():
    # Postfix ends lines at LF only: this is one X-Note field, no Content-Type
    raw = (b"X-Note: a\rContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--\r\n")
    m = normalize(raw)
    assert [h["name"] for h in m["headers"]] == ["X-Note"]
    assert m["attachments"] == [] and "--b" in m["text"]
