"""The package's layers: imports point down only, with no cycle and no
import tucked into a function to dodge one. Read from the source files'
syntax trees, so every import counts, wherever it is written."""
import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

from helpers import ROOT

PACKAGE = 'wavevit_mm'
# bottom (0) to top; a module may import its own floor or the floors below
LAYERS = {
    'errors': 0,
    'compat': 1,  # what the installed torch offers
    'ops': 2,
    'checkpoint': 3,
    'models': 4,
    'engine': 5,
    'registry': 5,
    'tools': 6,
}


def modules(root: str) -> Dict[str, str]:
    """Dotted module name -> file, for every .py file of the package."""
    found = {}
    for base, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(base, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                found['.'.join(parts)] = path
    return found


def imports(module: str, path: str) -> List[Tuple[str, bool, int]]:
    """(imported package-internal module, inside a function?, line)."""
    is_package = path.endswith('__init__.py')
    base = module.split('.') if is_package else module.split('.')[:-1]
    tree = ast.parse(open(path).read(), path)
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(map(id, ast.walk(node)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = '.'.join(base[:len(base) - node.level + 1])
                stem = f'{prefix}.{node.module}' if node.module else prefix
            else:
                stem = node.module or ''
            # `from . import x` names submodules; `from .a import x` a
            # module (and maybe a submodule of it)
            targets = [f'{stem}.{alias.name}' for alias in node.names]
            if node.module:
                targets.append(stem)
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + '.'):
                found.append((target, id(node) in local, node.lineno))
    return found


def floor(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def layer_problems(root: str) -> List[str]:
    """Every import that points up, sideways into another package of the
    same floor, or sits inside a function; and every import cycle."""
    table = modules(root)
    problems = []
    graph: Dict[str, Set[str]] = {m: set() for m in table}
    for module, path in table.items():
        source = floor(module)
        if source and source not in LAYERS:
            problems.append(f'{module}: floor {source!r} has no layer')
            continue
        for target, in_function, line in imports(module, path):
            if target not in table:
                continue  # a name imported from a module, not a module
            graph[module].add(target)
            where = f'{path}:{line}: {module} imports {target}'
            if in_function:
                problems.append(f'{where} inside a function')
            destination = floor(target)
            if not source or not destination or source == destination:
                continue  # the package's __init__ gathers everything
            if LAYERS.get(destination, 99) >= LAYERS[source]:
                problems.append(f'{where}, which is not on a lower floor')
    # cycles, by depth-first search over the module graph
    state: Dict[str, int] = {}

    def visit(module: str, trail: List[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target]
                problems.append('import cycle: ' + ' -> '.join(cycle))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return problems


def test_imports_point_down_the_layers():
    assert layer_problems(ROOT) == []


def test_every_floor_of_the_package_has_a_layer():
    floors = {floor(m) for m in modules(ROOT)} - {''}
    assert floors == set(LAYERS)


@pytest.mark.parametrize('source,problem,expected', [
    ('checkpoint/loading.py', 'from ..models import WaveViT\n',
     '{path}:{line}: wavevit_mm.checkpoint.loading imports wavevit_mm.models,'
     ' which is not on a lower floor'),
    ('models/official.py', 'def f():\n    from ..checkpoint import x\n',
     '{path}:{next_line}: wavevit_mm.models.official imports '
     'wavevit_mm.checkpoint inside a function'),
    ('ops/wavelet.py', 'import wavevit_mm.ops\n',
     'import cycle: wavevit_mm.ops -> wavevit_mm.ops.wavelet -> '
     'wavevit_mm.ops'),
], ids=['upward', 'local', 'cyclic'])
def test_the_checker_finds_upward_local_and_cyclic_imports(
        tmp_path, source, problem, expected):
    """A copy of the package with one bad import fails the check, which
    names that import: its file and line and both modules (or the cycle)."""
    for module, path in modules(ROOT).items():
        copy = tmp_path / os.path.relpath(path, ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(open(path).read())
    assert layer_problems(str(tmp_path)) == []
    bad = tmp_path / PACKAGE / source
    text = bad.read_text()
    line = text.count('\n') + 2  # the appended import, after a blank line
    bad.write_text(text + '\n' + problem)
    problems = layer_problems(str(tmp_path))
    if expected.startswith('import cycle'):
        # the search may enter the cycle at either module
        assert len(problems) == 1 and problems[0] in (
            expected, 'import cycle: wavevit_mm.ops.wavelet -> '
            'wavevit_mm.ops -> wavevit_mm.ops.wavelet')
    else:
        assert expected.format(path=bad, line=line, next_line=line + 1) \
            in problems
