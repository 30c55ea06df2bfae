"""What can be proven here about the next JAX (0.11 on the accelerator machine; only
0.10 installs on this Python): the code uses JAX's public API only, every JAX attribute
it names exists, and none of them is deprecated (JAX deprecates an API before it removes
it, so a deprecated name is the one a coming release drops)."""

import ast
import importlib
import pathlib
import warnings

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("jaxthyroid", "benchmarks", "tests", "experiments") for p in (ROOT / d).rglob("*.py"))
PRIVATE = "jax." + "_src"  # spelled in two parts so this file does not match itself


def test_no_private_jax_modules():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if PRIVATE in line or "jaxlib." + "_jax" in line
    ]
    assert not offenders, offenders


def _jax_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the JAX module or object it is bound to by an import."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "jax" or a.name.startswith("jax."):
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else "jax"
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.module == "jax" or node.module.startswith("jax."))
        ):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _chains(tree: ast.Module, roots: dict[str, str]):
    """Every dotted attribute chain ``root.a.b`` whose root is a JAX import, as full names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            parts = []
            cur = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in roots:
                yield node.lineno, ".".join([roots[cur.id], *reversed(parts)])
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jax":
            for a in node.names:
                yield node.lineno, f"{node.module}.{a.name}"


def _resolve(full_name: str):
    """Imports the longest module prefix of ``full_name`` and getattr's the rest."""
    parts = full_name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(full_name)


def _used_jax_names():
    used = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # mark parents, to take whole chains only
            for child in ast.iter_child_nodes(node):
                child._parent = node
        for lineno, name in _chains(tree, _jax_names(tree)):
            used.setdefault(name, f"{path.relative_to(ROOT)}:{lineno}")
    return used


USED = _used_jax_names()


def test_the_scan_finds_the_jax_api_the_code_uses():
    for name in ("jax.jit", "jax.shard_map", "jax.random.key", "jax.lax.pmean", "jax.sharding.PartitionSpec"):
        assert name in USED, name


def test_every_jax_name_used_exists_and_is_not_deprecated():
    missing, private, deprecated = [], [], []
    for name, where in sorted(USED.items()):
        if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")):
            private.append(f"{name} ({where})")
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _resolve(name)
            except (AttributeError, ImportError):
                missing.append(f"{name} ({where})")
                continue
        if any(issubclass(w.category, DeprecationWarning) for w in caught):
            deprecated.append(f"{name} ({where}): {caught[0].message}")
    assert not private, private
    assert not deprecated, deprecated
    assert not missing, missing


@pytest.mark.parametrize(
    "name", ["jax.core.Tracer", "jax.typeof", "jax.shard_map", "jax.make_array_from_process_local_data"]
)
def test_public_names_the_design_relies_on(name):
    assert _resolve(name) is not None, f"{name} missing in jax {jax.__version__}"
