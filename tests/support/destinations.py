"""Rule and Endpoint fields from flat keyword arguments, as test helpers take them: the
destination's fields (model.targets.Destination) are gathered into its `destination`."""
from __future__ import annotations

import dataclasses

from mxhook.model.targets import Destination

FIELDS = frozenset(f.name for f in dataclasses.fields(Destination))


def routed(url: str, **fields) -> dict:
    """`fields` with `url` and the destination's fields replaced by `destination`."""
    dest = {k: fields.pop(k) for k in list(fields) if k in FIELDS}
    return {"destination": Destination(url, **dest), **fields}
