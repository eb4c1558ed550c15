"""Caching of the stages: the one module that owns joblib.Memory, file digests and seals.

A stage's result is keyed by the content digests of its input files, every parameter, and the
digest of the package source its compute function depends on: the modules it imports, and what
those import in turn, found by reading their imports (joblib alone notices edits to the decorated
function only). Each call logs one line, reused or recomputed and why. A result is sealed with
its digest when stored, so a damaged entry is noticed and recomputed. `Cache(None)` turns caching
off: every call computes.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import os
import textwrap
from functools import cache
from pathlib import Path

import joblib

from .fileio import read_json_dict, sha256_file, write_json, write_text

log = logging.getLogger("pipeline")
PACKAGE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- which source a function uses


def _module_file(name: str) -> Path | None:
    """The source file of package module `name` (pipeline.x.y), or None when it is not one
    (outside the package, or a name imported from a module rather than a module)."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Package modules imported anywhere in `tree` (also inside functions), as dotted names."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import data`
    return {m for m in found if _module_file(m) is not None}


def _bound_names(tree: ast.AST) -> set[str]:
    """Names a function binds itself (arguments, assignments, imports): not its globals."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@cache
def _closure(module: str) -> frozenset[str]:
    """`module` and every package module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None or not path.exists():
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(_imports(ast.parse(path.read_text()), package) - seen)
    return frozenset(seen)


def code_digests(func) -> dict[str, str]:
    """sha256 (12 hex digits) of every package source file `func` depends on, by path: the
    modules its body imports or names, and their imports. Its own module is left out (joblib
    already hashes the function's code); a helper from that module counts by its own source."""
    roots: set[str] = set()
    helpers: dict[str, str] = {}
    _roots(func, roots, helpers)
    files = {f for m in roots for m2 in _closure(m) if (f := _module_file(m2)) and f.exists()}
    digests = {str(f.relative_to(PACKAGE.parent)): hashlib.sha256(f.read_bytes()).hexdigest()[:12]
               for f in sorted(files)}
    return {**digests, **helpers}


def _roots(func, roots: set[str], helpers: dict[str, str]) -> None:
    source = textwrap.dedent(inspect.getsource(func))
    tree = ast.parse(source)
    roots.update(_imports(tree, func.__module__.rpartition(".")[0]))
    local = _bound_names(tree)
    for node in ast.walk(tree):
        is_global = isinstance(node, ast.Name) and node.id not in local
        obj = func.__globals__.get(node.id) if is_global else None
        if obj is None or obj is func:
            continue
        name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if name == func.__module__ and inspect.isfunction(obj):
            key = f"{_module_file(name).relative_to(PACKAGE.parent)}:{obj.__name__}"
            if key not in helpers:
                helpers[key] = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:12]
                _roots(obj, roots, helpers)
        elif name and name != func.__module__ and _module_file(name) is not None:
            roots.add(name)


# ---------------------------------------------------------------- the cache


class Cache:
    """joblib.Memory under `location` (data/cache), or no caching at all with None."""

    def __init__(self, location: Path | None):
        self.location = Path(location) if location is not None else None
        if self.location is not None:
            # the cache holds pickles: keep it owner-only (it must be trusted, see the README)
            self.location.mkdir(parents=True, exist_ok=True)
            os.chmod(self.location, 0o700)

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, remembered by (size, mtime) so unchanged files are not reread."""
        path = Path(path).resolve()
        if self.location is None:
            return sha256_file(path)
        st = path.stat()
        book_path = self.location / "digests.json"
        book = read_json_dict(book_path)
        seen = book.get(str(path))
        if isinstance(seen, dict) and seen.get("size") == st.st_size \
                and seen.get("mtime_ns") == st.st_mtime_ns:
            return seen["sha256"]
        digest = sha256_file(path)
        book[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        write_json(book_path, book)
        return digest

    def call(self, stage: str, func, *, inputs: dict[str, str], params: dict,
             files: dict | None = None, label: str = "") -> tuple[object, bool]:
        """`func(files, inputs, params, code)` through joblib.Memory, logging reuse or why not.

        `inputs` maps input names to content digests, `params` holds every parameter
        (JSON-able), `files` holds paths to read (not part of the key). Returns (result,
        reused from cache)."""
        name = f"{stage}{label}"
        code = code_digests(func)
        args = (files or {}, inputs, params, _combined(code))
        if self.location is None:
            log.info("%s: computing (caching is off)", name)
            return func(*args), False
        # as JSON reads it back (tuples become lists), to compare with the previous call's key
        key = json.loads(json.dumps({"inputs": inputs, "params": params, "code": code},
                                    default=list))
        cached = joblib.Memory(self.location / "joblib", verbose=0).cache(func, ignore=["files"])
        result = None
        if cached.check_call_in_cache(*args):
            result = _load_checked(cached, args, name, self.location)
        else:
            log.info("%s: recomputing (%s)", name, self._why(stage, key))
        reused = result is not None
        if not reused:
            result = cached(*args)
            write_text(_seal_path(cached.call_and_shelve(*args)), joblib.hash(result))
        write_json(self.location / "last" / f"{stage}.json", key)
        return result, reused

    def _why(self, stage: str, key: dict) -> str:
        """Compare this call's key with the stage's previous one and say what changed."""
        last = read_json_dict(self.location / "last" / f"{stage}.json")
        if not last:
            return "no earlier result"
        reasons = [f"input {n} changed" for n, d in key["inputs"].items()
                   if last.get("inputs", {}).get(n) != d]
        for n, value in key["params"].items():
            before = last.get("params", {}).get(n, "<unset>")
            if before != value:
                reasons.append(f"parameter {n} changed {_show(before)} -> {_show(value)}")
        changed = sorted(f for f, d in key["code"].items() if last.get("code", {}).get(f) != d)
        if changed:
            more = " ..." if len(changed) > 3 else ""
            reasons.append(f"code changed ({', '.join(changed[:3])}{more})")
        return "; ".join(reasons) or "cache entry missing (cleared or unreadable)"


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _combined(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def _seal_path(shelved) -> Path:
    """Beside a joblib entry's output.pkl: the digest of the result, written when stored."""
    return Path(shelved.store_backend.location, shelved.func_id, shelved.args_id, "digest")


def _load_checked(cached, args, name: str, location: Path):
    """The cached result when it loads and matches its sealed digest; else None, after saying so
    in one line and clearing the entry (a truncated or bit-flipped pickle is recomputed)."""
    shelved = cached.call_and_shelve(*args)  # a reference; nothing is loaded yet
    seal = _seal_path(shelved)
    try:
        result = shelved.get()
        sealed = seal.read_text().strip() if seal.is_file() else None
        problem = None if sealed == joblib.hash(result) else "its digest does not match"
    except Exception as e:  # unpickling a damaged file can raise almost anything
        problem = f"it cannot be read: {type(e).__name__}"
    if problem is None:
        log.info("%s: reused from cache", name)
        return result
    where = seal.parent
    try:
        where = where.relative_to(location.parent.parent)
    except ValueError:
        pass
    log.warning("%s: cache entry %s is corrupt (%s); recomputing", name, where, problem)
    shelved.clear()
    return None


__all__ = ["Cache", "code_digests"]
