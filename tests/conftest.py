"""Shared fixtures.

End-to-end tests (`@pytest.mark.e2e`, tests/e2e/) get a whole stack through `mxhook_stack` or
`make_stack(...)`: a private Postfix instance on 127.0.0.1, the real mxhook-milter and
mxhook-spooler as subprocesses, a loopback HTTP receiver and the real `mxhook` CLI (see
tests/support/daemons.py). Nothing is skipped silently: without Postfix the fixture fails and
says how to install it. When a test fails, the daemons' stderr and the maillog are attached to
its report.
"""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "milter")):
    if path not in sys.path:
        sys.path.insert(0, path)

# Retry schedules in e2e tests run at this fraction of the rules' real times (a rule's minimum
# retry interval of 10 s becomes 0.5 s); see [spooler] retry_time_scale.
E2E_RETRY_TIME_SCALE = "0.05"


def e2e_config(overrides: dict | None = None) -> dict:
    values: dict[str, dict[str, str]] = {"spooler": {"retry_time_scale": E2E_RETRY_TIME_SCALE}}
    for section, kv in (overrides or {}).items():
        values.setdefault(section, {}).update(kv)
    return values


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed e2e test's report gets the daemons' stderr and the maillog (while they still
    exist: this runs before the fixtures' teardown)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for stack in getattr(item, "_mxhook_stacks", ()):
            try:
                rep.sections.append(("mxhook stack", stack.diagnostics()))
            except Exception as exc:  # diagnostics must never hide the failure
                rep.sections.append(("mxhook stack", f"(no diagnostics: {exc})"))


@pytest.fixture
def make_stack(request):
    """Factory: `make_stack(permit=["ours.example"], config={"milter": {...}})` -> a started
    MxhookStack, stopped at the end of the test. Same arguments as MxhookStack."""
    from tests.support.daemons import MxhookStack

    stacks: list[MxhookStack] = []
    request.node._mxhook_stacks = stacks

    def factory(domains=("ours.example",), *, permit=("ours.example",), config=None, **kw):
        stack = MxhookStack(domains, permit=permit, config=e2e_config(config), **kw)
        stacks.append(stack)
        return stack.start()

    yield factory
    for stack in reversed(stacks):
        stack.stop()


@pytest.fixture
def mxhook_stack(make_stack):
    """Postfix + milter + spooler + receiver, with `ours.example` permitted and no rules."""
    return make_stack()


@pytest.fixture(autouse=True)
def _signal_mask_restored():
    """mxhook-milter's main() blocks SIGTERM/SIGINT/SIGHUP for libmilter's signal thread; a test
    that calls it in-process must not leave them blocked, or every daemon a later test starts
    inherits the mask and ignores SIGTERM."""
    import signal
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
