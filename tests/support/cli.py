"""A click test runner that keeps stdout and stderr apart on every click we support."""
from __future__ import annotations

import inspect

from click.testing import CliRunner

# click 8.1 (Debian 12) mixes stderr into stdout unless told `mix_stderr=False`; click 8.2
# (Debian 13) removed the argument and always captures them apart (`result.output` is then
# both, interleaved -- read `result.stdout` and `result.stderr`).
_HAS_MIX_STDERR = "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def separate_runner(**kwargs) -> CliRunner:
    """A CliRunner whose results have `.stdout` and `.stderr` captured separately."""
    if _HAS_MIX_STDERR:
        kwargs["mix_stderr"] = False
    return CliRunner(**kwargs)
