"""The package's structure, read from its source: every import follows the declared layer order (a module
never imports from a higher layer; deferred imports inside functions count too), no import cycle among its
modules, no private name imported from another module, no function over 80 lines. Each failure names the
modules or the function. The layer order is declared here, once, and docs/architecture.md shows it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "covidnet"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
MAX_FUNCTION_LINES = 80

# The layers, lowest first: a module may import from its own layer or a lower one, never from a higher one.
# A name is a top-level module or package of covidnet (``covidnet.<name>``); "" is the package root, which
# imports nothing eagerly and whose ``__version__`` and ``DISCLAIMER`` every layer may read.
LAYERS = (
    ("", "errors", "files", "config"),  # the ground: what a user can get wrong, atomic files, config fields
    ("imageio",),  # file bytes -> 2-D uint8 arrays (PNG, JPEG, WebP, DICOM), with their limits
    ("contract",),  # THE preprocessing contract and the image operations it defines
    ("data", "models", "metrics", "augment", "explain", "report", "profile"),  # datasets, networks, figures
    ("checkpoint",),  # self-describing checkpoints, read into today's form
    ("tasks",),  # what differs between classification, severity, risk and segmentation, and nothing else
    ("runtime",),  # a loaded model of any task and backend: covidnet.load
    ("train", "evaluate", "predict", "lungs"),  # the one training loop; evaluation; prediction
    ("audit", "study", "export", "serve", "demo"),  # what runs the above: audits, studies, deployment
    ("cli", "__main__"),  # thin: parses arguments, calls the Python API
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, importer_is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if importer_is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods) -> list[tuple[str, str, list[str], int]]:
    """(importer, imported module, names, line) for every import of a covidnet module, at any depth."""
    out = []
    for name, (path, tree) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(name, a.name, [], node.lineno) for a in node.names if a.name.startswith("covidnet")]
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, is_package(path), node)
                if not target.startswith("covidnet"):
                    continue
                names = [a.name for a in node.names]
                # `from . import x` where x is a submodule imports that module
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                out += [(name, s, [], node.lineno) for s in subs]
                rest = [n for n in names if f"{target}.{n}" not in mods]
                if rest or not subs:
                    out.append((name, target, rest, node.lineno))
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_package_modules():
    mods = modules()
    edges: dict[str, set[str]] = {}
    for importer, target, _, _ in imports(mods):
        if target in mods and target != importer and target != "covidnet":  # the package root imports nothing eagerly
            edges.setdefault(importer, set()).add(target)
    assert cycles(edges) == [], "import cycles (modules that import each other, directly or around a loop)"


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for k, names in enumerate(LAYERS):
        if top in names:
            return k
    raise AssertionError(f"{module}: its top-level name {top!r} is in no layer of LAYERS; declare it there")


def test_every_module_is_in_a_declared_layer():
    assert [m for m in modules() if not any(layer_of(m) == k for k in range(len(LAYERS)))] == []


def test_no_import_goes_against_the_layer_order():
    against = []
    for importer, target, _, line in imports(modules()):
        if target == "covidnet":  # the root: only __version__ and DISCLAIMER are read from it
            continue
        if layer_of(target) > layer_of(importer):
            against.append(f"{importer}:{line} imports {target} (layer {layer_of(target)} over {layer_of(importer)})")
    assert against == []


def test_the_checks_see_an_import_against_the_layers():
    assert layer_of("covidnet.data.build") < layer_of("covidnet.runtime") < layer_of("covidnet.train")
    assert layer_of("covidnet.contract") < layer_of("covidnet.data.store")
    assert layer_of("covidnet") == 0 and layer_of("covidnet.cli.train") == len(LAYERS) - 1


def test_architecture_page_shows_the_declared_layers():
    # docs/architecture.md lists the layers in a table, one row a layer, its names in backticks, lowest first
    page = ARCHITECTURE.read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and "`" in line and line[2:3].isdigit()]
    shown = [tuple(part.strip("`") for part in row.split("|")[2].split() if part.startswith("`")) for row in rows]
    assert shown == [tuple(n for n in layer if n) for layer in LAYERS]


def test_the_package_root_imports_no_submodule_at_import_time():
    # covidnet/__init__.py loads its API lazily (PEP 562), so every module may import __version__ from it
    _, tree = modules()["covidnet"]
    eager = [ast.unparse(n) for n in tree.body if isinstance(n, ast.ImportFrom) and (n.level or "covidnet" in n.module)]
    eager += [
        ast.unparse(n) for n in tree.body if isinstance(n, ast.Import) and any("covidnet" in a.name for a in n.names)
    ]
    assert eager == []


def test_no_private_name_is_imported_across_modules():
    mods = modules()
    bad = []
    for importer, target, names, line in imports(mods):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and target != importer:
            bad.append(f"{importer}:{line} imports {', '.join(private)} from {target}")
        last = target.rsplit(".", 1)[-1]
        if last.startswith("_") and not last.startswith("__"):  # a private module: its own package only
            if importer.rsplit(".", 1)[0] != target.rsplit(".", 1)[0] and importer != target.rsplit(".", 1)[0]:
                bad.append(f"{importer}:{line} imports the private module {target}")
    for name, (_, tree) in mods.items():  # module.attribute on an imported covidnet module
        aliases = {a.asname or a.name: a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases.get(node.value.id, "").startswith("covidnet")
            ):
                bad.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, (_, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} (line {node.lineno}): {n} lines")
    assert long == []


def test_the_checks_see_a_cycle_a_private_import_and_the_modules():
    # the walk finds what it must: every module, the real imports, and a cycle when there is one
    mods = modules()
    assert {"covidnet.contract", "covidnet.runtime", "covidnet.metrics.classification", "covidnet.cli"} <= set(mods)
    found = {(a, b) for a, b, _, _ in imports(mods)}
    assert ("covidnet.runtime.base", "covidnet.contract") in found and (
        "covidnet.evaluate",
        "covidnet.runtime",
    ) in found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
