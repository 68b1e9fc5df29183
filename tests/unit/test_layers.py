"""The import contract of the layers (docs/ARCHITECTURE.md): the pure layers do no I/O, and no
package imports a layer above it, so the dependency graph has no cycle.

Read from the source with `ast`, so a lazy import inside a function counts as much as one at the
top of a module.
"""
from __future__ import annotations

import ast
import os

import pytest

import mxhook

PACKAGE_DIR = os.path.dirname(mxhook.__file__)

# Pure: the inbound decision, MIME, matching, payload mapping and log-line parsing. They take
# bytes, strings and clocks from their callers and hand back values.
PURE = ("mxhook.model", "mxhook.payloads", "mxhook.postfix.maillog")
FORBIDDEN_IN_PURE = {
    "sqlite3", "sqlite_utils", "Milter", "requests", "urllib3", "socket", "ssl", "subprocess",
    "os", "shutil", "pathlib", "io", "fcntl", "tempfile", "threading", "select", "signal", "click",
    "logging",
}
FORBIDDEN_CALLS_IN_PURE = {"open", "print", "input", "exec", "eval", "__import__"}


def _modules() -> dict[str, str]:
    found = {}
    for root, _dirs, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
            found[rel.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in `module`, at any depth."""
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read(), MODULES[module])
    out = []
    is_package = MODULES[module].endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from mxhook.model import rules` imports the module mxhook.model.rules (and runs
            # the package's __init__, which holds only a docstring: not counted)
            submodules = [f"{target}.{alias.name}" for alias in node.names
                          if f"{target}.{alias.name}" in MODULES]
            if len(submodules) < len(node.names):
                out.append((target, node.lineno))
            out.extend((m, node.lineno) for m in submodules)
    return out


def _is_pure(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PURE)


def test_the_tree_has_the_layers():
    for package in ("mxhook.model", "mxhook.payloads", "mxhook.store", "mxhook.delivery",
                    "mxhook.daemons", "mxhook.postfix", "mxhook.services", "mxhook.web", "mxhook.cli"):
        assert package in MODULES, package


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_pure(m)))
def test_pure_modules_do_no_io(module):
    problems = []
    for target, line in _imports(module):
        top = target.split(".")[0]
        if top in FORBIDDEN_IN_PURE:
            problems.append(f"line {line}: imports {target}")
        if target.startswith("mxhook.") and target in MODULES and not _is_pure(target) \
                and target != "mxhook":
            problems.append(f"line {line}: imports {target}, which is not a pure module")
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in FORBIDDEN_CALLS_IN_PURE:
            problems.append(f"line {node.lineno}: calls {node.func.id}()")
    assert not problems, f"{module} must stay pure:\n" + "\n".join(problems)


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        graph[module] = {t for t, _ in _imports(module)
                         if t in MODULES and t != module and t != "mxhook"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "mxhook.services")))
def test_services_know_no_front_end(module):
    """The operations serve the CLI, the HTTP API and the console alike: no click in them, and
    nothing from the CLI."""
    problems = [f"line {line}: imports {target}" for target, line in _imports(module)
                if target.split(".")[0] == "click" or _in(target, "mxhook.cli")]
    assert not problems, f"{module} must not depend on a front-end:\n" + "\n".join(problems)


# Message authentication does DNS, through a resolver it is handed or dnspython's, and nothing
# else: no milter protocol, database or HTTP, so the milter, `rule test` and tests share it.
FORBIDDEN_IN_MAILAUTH = {"Milter", "sqlite3", "sqlite_utils", "requests", "urllib3", "click"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "mxhook.mailauth")))
def test_mailauth_does_only_dns(module):
    problems = [f"line {line}: imports {target}" for target, line in _imports(module)
                if target.split(".")[0] in FORBIDDEN_IN_MAILAUTH]
    assert not problems, f"{module} must do no I/O but DNS:\n" + "\n".join(problems)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "mxhook.web")))
def test_web_views_call_services_only(module):
    """The HTTP front-end holds no logic of its own: no database, no store, no delivery; what
    it does, it asks the services."""
    problems = [f"line {line}: imports {target}" for target, line in _imports(module)
                if target.split(".")[0] in ("sqlite3", "sqlite_utils")
                or any(_in(target, p) for p in ("mxhook.store", "mxhook.delivery", "mxhook.spool"))]
    assert not problems, f"{module} must go through mxhook.services:\n" + "\n".join(problems)


# The layers from the bottom up (docs/ARCHITECTURE.md): a module imports only from its own
# layer and those below it. The store only stores: how data is presented (payloads), sent
# (delivery), run (daemons) or asked for (cli) is decided above it and handed in.
ORDER = ("mxhook.config", "mxhook.model", "mxhook.mailauth", "mxhook.postfix", "mxhook.spool",
         "mxhook.heartbeat",
         "mxhook.store", "mxhook.payloads", "mxhook.delivery", "mxhook.services", "mxhook.web",
         "mxhook.track", "mxhook.daemons",
         "mxhook.cli")
# Known exceptions, each with its reason.
UPWARD = {
    # rules.db stores the signing secrets and keys, which signing.py makes and parses
    ("mxhook.store.rulesdb", "mxhook.delivery.signing"),
}


def _layer(module: str) -> int | None:
    for rank, prefix in enumerate(ORDER):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if m != "mxhook" and _layer(m) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted({(m, t) for m in MODULES for t, _ in _imports(m)
                     if t in MODULES and t != "mxhook" and _layer(m) is not None
                     and _layer(t) is not None and _layer(t) > _layer(m)})
    assert [pair for pair in upward if pair not in UPWARD] == []
    assert UPWARD <= set(upward), "an exception that no longer exists: remove it from UPWARD"
