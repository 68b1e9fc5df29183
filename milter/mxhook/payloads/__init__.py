"""Request bodies. Pure: documents in, bytes and a content type out.

- payloads/inbound.py, payloads/events.py: the documents (what goes in a payload, as plain
  data), from typed inputs;
- payloads/encodings.py: json, multipart/form-data, x-www-form-urlencoded, raw MIME, and the
  payload size cap;
- payloads/registry.py: the names an admin picks (inbound formats, event payload versions and
  formats), each a (document producer, encoding) pair, and the one lookup, `render_inbound` /
  `render_events`, that the spooler and `mxhook endpoint test` call.
"""
