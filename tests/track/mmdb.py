"""A tiny MaxMind DB (format 2.0) writer for the tests: one IPv4 network with one record.

Debian packages readers only (python3-maxminddb, libmaxminddb), no writer, and MaxMind's test
databases are stripped from Debian's sources; so this writes the format from its specification
(https://maxmind.github.io/MaxMind-DB/): a binary search tree of 24-bit records, 16 zero bytes,
the data section, then the metadata marker and map. The types are the ones libmaxminddb checks
in the metadata (uint16, uint32, uint64, array, map, utf8 string).
"""
from __future__ import annotations

import ipaddress

UTF8, UINT16, UINT32, MAP, UINT64, ARRAY = 2, 5, 6, 7, 9, 11


def _control(type_: int, size: int) -> bytes:
    first, ext = (type_ << 5, b"") if type_ <= 7 else (0, bytes([type_ - 7]))
    if size < 29:
        return bytes([first | size]) + ext
    if size < 285:
        return bytes([first | 29]) + ext + bytes([size - 29])
    return bytes([first | 30]) + ext + (size - 285).to_bytes(2, "big")


def _uint(type_: int, value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return _control(type_, len(data)) + data


def encode(value) -> bytes:
    """A value in the data section's encoding; ints are uint32 unless wrapped in a (type, int)."""
    if isinstance(value, tuple):
        return _uint(*value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return _control(UTF8, len(data)) + data
    if isinstance(value, int):
        return _uint(UINT32, value)
    if isinstance(value, list):
        return _control(ARRAY, len(value)) + b"".join(map(encode, value))
    if isinstance(value, dict):
        return _control(MAP, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    raise TypeError(type(value))


def write(path: str, network: str, record: dict, database_type: str = "Test-City") -> None:
    """A database in which `network` (IPv4) maps to `record` and every other address to nothing."""
    net = ipaddress.ip_network(network)
    bits = format(int(net.network_address), "032b")[:net.prefixlen]
    node_count = len(bits)
    data = encode(record)
    data_pointer = node_count + 16  # + offset 0 in the data section
    tree = b""
    for i, bit in enumerate(bits):
        follow = i + 1 if i + 1 < node_count else data_pointer
        left, right = (follow, node_count) if bit == "0" else (node_count, follow)
        tree += left.to_bytes(3, "big") + right.to_bytes(3, "big")
    metadata = {
        "binary_format_major_version": (UINT16, 2), "binary_format_minor_version": (UINT16, 0),
        "build_epoch": (UINT64, 1_800_000_000), "database_type": database_type,
        "description": {"en": "mxhook test database"}, "ip_version": (UINT16, 4),
        "languages": ["en"], "node_count": (UINT32, node_count), "record_size": (UINT16, 24),
    }
    with open(path, "wb") as fh:
        fh.write(tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + encode(metadata))
