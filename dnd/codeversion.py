"""Which code a stage's result depends on: the import closure of its `dnd` modules, hashed.

A rule's rerun trigger (`params: code=`) is this hash for the modules its CLI command imports. The
closure is read from the source with `ast` — every `import`/`from … import` anywhere in a module,
including the lazy ones inside functions, and the `__init__` of every package on the way — so it
cannot go stale the way a hand-kept list of files does.

Modules that only say *how* a stage runs, not *what* it computes, are left out of every closure and
so never rerun anything: the launcher (local pool / SLURM), logging, provenance records, atomic
writes, work areas, config loading and the CLI wiring.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "dnd"
PACKAGE_DIR = Path(__file__).resolve().parent

# How a stage runs, never what it computes (prefixes: a package covers its submodules).
RUNTIME_ONLY = (
    "dnd.launch", "dnd.logs", "dnd.provenance", "dnd.atomic", "dnd.workarea", "dnd.digests",
    "dnd.config", "dnd.cli", "dnd.commands", "dnd.__main__", "dnd.codeversion",
)


def is_runtime_only(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in RUNTIME_ONLY)


def module_file(module: str) -> Path | None:
    """The source file of a `dnd` module or package; None when there is none (a name, not a module)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _packages_of(module: str) -> list[str]:
    """The packages importing `module` executes first: dnd, dnd.x for dnd.x.y, …"""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_relative(module: str, node: ast.ImportFrom) -> str:
    base = module.split(".")
    if module_file(module) is not None and module_file(module).name != "__init__.py":
        base = base[:-1]  # a plain module's relative imports start from its package
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@lru_cache(maxsize=None)
def direct_imports(module: str) -> frozenset[str]:
    """The `dnd` modules `module` imports, anywhere in its source (functions included)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_relative(module, node) if node.level else (node.module or "")
            found.add(source)
            # `from dnd.data import shards` imports the module dnd.data.shards
            found.update(f"{source}.{alias.name}" for alias in node.names if module_file(f"{source}.{alias.name}"))
    modules = {name for name in found if module_file(name) is not None}
    return frozenset(modules | {pkg for name in modules for pkg in _packages_of(name)})


def import_closure(entries: list[str] | tuple[str, ...]) -> list[str]:
    """Every `dnd` module that running `entries` imports, less the runtime-only ones, sorted."""
    seen: set[str] = set()
    todo = [name for entry in entries for name in (*_packages_of(entry), entry)]
    while todo:
        module = todo.pop()
        if module in seen or is_runtime_only(module) or module_file(module) is None:
            continue
        seen.add(module)
        todo.extend(direct_imports(module))
    return sorted(seen)


def code_version(entries: list[str] | tuple[str, ...]) -> str:
    """A short hash of the source of `entries`' import closure (module names and bytes)."""
    digest = hashlib.sha256()
    for module in import_closure(entries):
        digest.update(module.encode() + b"\0" + module_file(module).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def command_entries(command: str, commands_source: Path | None = None) -> list[str]:
    """The `dnd` modules the CLI command `command` (e.g. "train-tokenizer") imports to do its work.

    Read from `cmd_<command>` in `dnd/commands.py`, so a command's wiring names its stage modules once.
    """
    source = commands_source or PACKAGE_DIR / "commands.py"
    name = "cmd_" + command.replace("-", "_")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            entries = set()
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.split(".")[0] == PACKAGE:
                    entries.add(inner.module)
                    entries.update(f"{inner.module}.{a.name}" for a in inner.names if module_file(f"{inner.module}.{a.name}"))
                elif isinstance(inner, ast.Import):
                    entries.update(a.name for a in inner.names if a.name.split(".")[0] == PACKAGE)
            return sorted(e for e in entries if not is_runtime_only(e))
    raise KeyError(f"dnd/commands.py has no command {command!r} (no function {name})")


def command_code_version(command: str) -> str:
    """The rerun trigger of a rule that runs `dnd <command>`."""
    return code_version(command_entries(command))
