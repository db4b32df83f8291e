"""dvc.yaml as a whole: every stage declares every module and params key its code reads.

DVC re-runs a stage only when something it declares changes, so a module or a params key
that a stage reads but does not declare lets ``dvc repro`` call stale outputs up to date.
Both sets are derived from the code when the test runs, so they follow the code as it moves:
nothing here is pinned to today's stages, modules or keys.

**What a stage runs.** Its ``cmd`` is a console script of pyproject.toml (``ser train`` →
``ser.cli:main``). That function is walked with the stage's arguments: the CLI's own parser
reads them, and a branch on what it parsed (``args.command == "data"``, ``name == "train"``)
is followed only where it goes for this command. The stage's *entry points* are the
functions of other modules that the dispatcher hands the params object to
(``ser.train.run(params)``, ``ser.tune.run(params, path)``).

**Modules.** A stage depends on its entry points' modules and everything they import,
transitively (``import`` statements anywhere in a module, lazy ones included), with the
packages that hold them: importing ``ser.train`` runs ``ser/__init__.py``, which also fixes
the label order; and the module that loads params (``ser.config``), which every stage runs
(a stage may do nothing else). The dispatcher is left out: ``cli.py`` only parses arguments
and calls the entry point, and the other modules it imports serve other commands
(``ser.data``, ``ser.remote``) or only lend their exception classes; depending on them would
re-run the pipeline for a new ``ser predict`` flag.
A declared folder covers the modules under it.

**Params keys.** Values are followed from ``load_params`` (a function returning the class
that params.yaml is validated into without taking one) through assignments, calls of the
package's functions, methods and closures, returns, containers, module-level registries and
instances of its classes (a dataclass's fields are followed; what a plain class's
``__init__`` keeps counts as read). A key is *read* where a params object is used rather
than passed along, navigated or thrown away: compared, computed with, iterated, dumped, or
given to code outside the package (keras, numpy, optuna, ...). So ``t = params.train; t.seed`` reads ``train.seed``, and
``hp: ModelParams`` reads the ``model`` section only where ``hp`` was made from
``params.model`` (not where it comes from tuning/hyperparams.json, a file dependency).
``model_dump(exclude=...)`` reads all but the excluded keys; ``model_copy(update=...)``
replaces the updated keys with what updates them. Where a chain cannot be followed (a method
of a section, an unresolved call, ``getattr`` with an unknown name) the whole section counts
as read; where a value may be one of several (``model.kind`` picks one of several model
kinds), every one counts. The whole params object given to code outside the package counts
as every key, unless the same call also takes a function of the package with a ``Params``
parameter (``pool.map(_extract, jobs, [params] * n)``), which is followed instead.
Deliberately not followed: the arguments of ``mlflow`` calls (MLflow is a side record that
logs every key; no DVC output depends on it) and processes a stage starts (tune's extra
workers, which run code followed here). A section in ``params:`` covers its keys.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import operator
import shlex
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
import yaml
from conftest import PROJECT_ROOT

SIDE_RECORDS = {"mlflow"}  # third-party modules whose calls are not followed (see above)
MODEL_ATTRIBUTES = frozenset(dir(pydantic.BaseModel))  # a section's methods, never its keys
CLASS_ATTRIBUTES = frozenset(
    name
    for name in MODEL_ATTRIBUTES
    if isinstance(inspect.getattr_static(pydantic.BaseModel, name), classmethod | staticmethod)
)  # ``section.model_validate(...)`` reads nothing of the section
CONTAINER_METHODS = {"items", "values", "get", "pop", "copy", "setdefault"}
TYPE_BUILTINS = {"type", "isinstance", "issubclass", "id", "callable"}  # read no values
EMPTY: frozenset = frozenset()
MAX_ANALYSES = 20_000  # a bound on distinct (function, arguments) pairs, against runaway recursion
COMPARISONS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip


# What an expression may evaluate to: a frozenset of the following.
@dataclass(frozen=True)
class Ref:
    """A params object: the root (``path`` empty), a section or a key. ``overrides`` are the
    keys ``model_copy(update=...)`` replaced, with what replaced them."""

    path: tuple[str, ...]
    overrides: tuple[tuple[str, frozenset], ...] = ()


@dataclass(frozen=True)
class Const:
    """A value known without running the code: a literal, or an argument the CLI parsed."""

    value: object


@dataclass(frozen=True)
class Parsed:
    """What the CLI's parser made of the stage's arguments."""

    items: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Module:
    name: str


@dataclass(frozen=True)
class Func:
    module: str
    name: str  # "function" or "Class.method"


@dataclass(frozen=True)
class Closure:
    """A nested function or a lambda, with the names it sees where it is defined."""

    module: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
    env: tuple[tuple[str, frozenset], ...]


@dataclass(frozen=True)
class Class:
    module: str
    name: str


@dataclass(frozen=True)
class Obj:
    """An instance of one of the package's dataclasses, with what its fields hold."""

    cls: Class
    fields: tuple[tuple[str, frozenset], ...]


@dataclass(frozen=True)
class Tup:
    items: tuple[frozenset, ...]


@dataclass(frozen=True)
class External:
    name: str  # a module outside the package, or something in it: "mlflow.log_params"


def union(sets) -> frozenset:
    return frozenset().union(*sets)


def freeze(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in value.items())
    return value


def const(value: object) -> frozenset:
    value = freeze(value)
    try:
        hash(value)
    except TypeError:
        return EMPTY
    return frozenset({Const(value)})


def holds_params(atoms: frozenset) -> bool:
    return any(
        isinstance(a, Ref)
        or (isinstance(a, Tup) and any(holds_params(i) for i in a.items))
        or (isinstance(a, Obj) and any(holds_params(v) for _, v in a.fields))
        for a in atoms
    )


def named(node: ast.expr | None, name: str) -> bool:
    """Whether an annotation or decorator is ``name`` (``x.name``, ``"name"``, ``name(...)``)."""
    if isinstance(node, ast.Call):
        node = node.func
    return (
        (isinstance(node, ast.Name) and node.id == name)
        or (isinstance(node, ast.Attribute) and node.attr == name)
        or (isinstance(node, ast.Constant) and node.value == name)
    )


def top_statements(body: list[ast.stmt]):
    """A module's top-level statements, those under a top-level ``if`` or ``try`` included."""
    for node in body:
        if isinstance(node, ast.If | ast.Try):
            yield from top_statements(
                [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]
            )
        else:
            yield node


class Project:
    """A checkout: its parsed source under src/, params.yaml's keys and dvc.yaml's stages."""

    def __init__(self, root: Path) -> None:
        self.root = root = root.resolve()
        self.params = yaml.safe_load((root / "params.yaml").read_text()) or {}
        self.stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
        pyproject = tomllib.loads((root / "pyproject.toml").read_text())
        self.scripts = pyproject["project"].get("scripts", {})
        self.files: dict[str, Path] = {}
        for path in sorted((root / "src").rglob("*.py")):
            parts = path.relative_to(root / "src").with_suffix("").parts
            self.files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        self.paths = {name: path.relative_to(root).as_posix() for name, path in self.files.items()}
        self.trees = {name: ast.parse(path.read_text()) for name, path in self.files.items()}
        self.names = {name: self.top_level(tree) for name, tree in self.trees.items()}
        roots = {
            node.name
            for names in self.names.values()
            for node in names.values()
            if isinstance(node, ast.ClassDef)
            and self.params
            and set(self.params)
            == {
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
        }
        assert len(roots) == 1, f"no single class has params.yaml's sections as fields: {roots}"
        self.root_class = roots.pop()

    @staticmethod
    def top_level(tree: ast.Module) -> dict[str, ast.stmt]:
        """Each name a module defines at top level, and the statement that defines it."""
        names: dict[str, ast.stmt] = {}
        for node in top_statements(tree.body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names[node.name] = node
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name.split(".")[0], node) for a in node.names)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(
                    (n.id, node) for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
                )
        return names

    # modules and imports
    def import_base(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module if self.files[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package

    def with_packages(self, name: str) -> set[str]:
        """``name`` and the packages holding it, those that are in src/."""
        parts = name.split(".")
        return {m for i in range(len(parts)) if (m := ".".join(parts[: i + 1])) in self.files}

    def closure(self, modules: set[str]) -> set[str]:
        """``modules`` and every module of src/ they import, transitively."""
        seen, todo = set(), [p for m in modules for p in self.with_packages(m)]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            for node in ast.walk(self.trees[module]):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = self.import_base(module, node)
                    names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
                else:
                    continue
                todo += [found for name in names for found in self.with_packages(name)]
        return seen

    def function(self, func: Func) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        owner, _, name = func.name.rpartition(".")
        node = self.names[func.module].get(owner or name)
        if owner and isinstance(node, ast.ClassDef):
            node = next((n for n in node.body if getattr(n, "name", None) == name), None)
        return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None

    def is_source(self, node: ast.FunctionDef | ast.Lambda) -> bool:
        """Whether ``node`` makes the params object (``load_params(path) -> Params``): it
        returns the root class without taking one."""
        spec = node.args
        return named(getattr(node, "returns", None), self.root_class) and not any(
            named(a.annotation, self.root_class) for a in [*spec.posonlyargs, *spec.args]
        )

    def fields(self, cls: Class) -> dict[str, ast.expr | None] | None:
        """A dataclass's fields in order, with their defaults; None for other classes."""
        node = self.names[cls.module][cls.name]
        if not any(named(d, "dataclass") for d in node.decorator_list):
            return None
        return {
            s.target.id: s.value
            for s in node.body
            if isinstance(s, ast.AnnAssign)
            and isinstance(s.target, ast.Name)
            and "ClassVar" not in ast.unparse(s.annotation)
        }

    # params.yaml
    def node(self, path: tuple[str, ...]) -> object:
        node: object = self.params
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def is_section(self, path: tuple[str, ...]) -> bool:
        return isinstance(self.node(path), dict)

    def leaves(self, path: tuple[str, ...] = ()) -> list[str]:
        node = self.node(path)
        if isinstance(node, dict) and node:
            return [leaf for key in node for leaf in self.leaves((*path, key))]
        return [".".join(path)]

    def compact(self, keys: set[str], path: tuple[str, ...] = ()) -> list[str]:
        """``keys``, naming a section instead of its keys when all of them are in ``keys``."""
        out = []
        for key, node in (self.node(path) or {}).items():
            if all(leaf in keys for leaf in self.leaves((*path, key))):
                out.append(".".join((*path, key)))
            elif isinstance(node, dict):
                out += self.compact(keys, (*path, key))
        if not path:
            out += sorted(keys - set(self.leaves()))  # defaults with no value in params.yaml
        return out

    # dvc.yaml
    def declared_deps(self, stage: dict) -> list[Path]:
        base = self.root / stage.get("wdir", ".")
        deps = (d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", []))
        return [(base / d).resolve() for d in deps]

    def declared_params(self, stage: dict) -> list[str]:
        keys = []
        for entry in stage.get("params", []):
            if isinstance(entry, str):
                keys.append(entry)
            elif "params.yaml" in entry:  # {file: [keys]}; no keys: the whole file
                keys += entry["params.yaml"] or [""]
        return keys


class Frame:
    """One function being analysed: its module, local names and what it returns."""

    def __init__(self, module: str, env: dict | None = None) -> None:
        self.module, self.env, self.returns = module, dict(env or {}), set()


class StageCode:
    """What one stage's command runs: its entry modules and the params keys it reads."""

    def __init__(self, project: Project, cmd: str) -> None:
        self.project = project
        self.argv = shlex.split(cmd)
        assert self.argv and self.argv[0] in project.scripts, (
            f"`{cmd}`: not a console script of pyproject.toml, cannot tell which code it runs"
        )
        self.script, _, main = project.scripts[self.argv[0]].partition(":")
        self.reads: dict[str, str] = {}  # key → where it is first read
        self.entries: set[str] = set()
        self.parsed = False
        self.memo: dict = {}
        self.module_values: dict[str, dict] = {}
        self.invoke(Func(self.script, main), None, [], {}, Frame(self.script), "")
        assert self.parsed, f"`{cmd}`: found no parse_args call in {self.script} to dispatch on"
        assert self.entries, f"`{cmd}`: {self.script} neither loads params nor hands them on"

    def modules(self) -> set[str]:
        return self.project.closure(self.entries)

    # reading params
    def record(self, path: tuple[str, ...], where: str) -> None:
        for leaf in self.project.leaves(path):
            self.reads.setdefault(leaf, where)

    def read(self, ref: Ref, where: str, exclude=frozenset(), include=None) -> None:
        overrides = dict(ref.overrides)
        if not self.project.is_section(ref.path) or (
            not overrides and not exclude and include is None
        ):
            return self.record(ref.path, where)
        for key in self.project.node(ref.path):
            if key in exclude or (include is not None and key not in include):
                continue
            if key in overrides:
                self.consume(overrides[key], where)
            else:
                self.record((*ref.path, key), where)

    def consume(self, atoms: frozenset, where: str) -> None:
        for atom in atoms:
            if isinstance(atom, Ref):
                self.read(atom, where)
            elif isinstance(atom, Tup):
                for item in atom.items:
                    self.consume(item, where)
            elif isinstance(atom, Obj):
                for _, value in atom.fields:
                    self.consume(value, where)

    def elements(self, atoms: frozenset, where: str) -> frozenset:
        """What iterating over ``atoms`` gives: a tuple's items, what a container was given."""
        out: set = set()
        for atom in atoms:
            if isinstance(atom, Tup):
                out |= union(atom.items)
            elif isinstance(atom, Ref):  # iterating a params object reads it
                self.read(atom, where)
            elif not isinstance(atom, Const | Parsed):
                out.add(atom)
        return frozenset(out)

    def where(self, frame: Frame, node: ast.AST) -> str:
        return f"{self.project.paths.get(frame.module)}:{getattr(node, 'lineno', '?')}"

    def use(self, node: ast.expr | None, frame: Frame) -> None:
        if node is not None:
            self.consume(self.value(node, frame), self.where(frame, node))

    # names
    def global_value(self, module: str, name: str, seen: frozenset = EMPTY) -> frozenset:
        node = self.project.names.get(module, {}).get(name)
        if (module, name) in seen or node is None:
            return EMPTY
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return frozenset({Func(module, name)})
        if isinstance(node, ast.ClassDef):
            return frozenset({Class(module, name)})
        if isinstance(node, ast.Import | ast.ImportFrom):
            return self.binding(module, node, seen | {(module, name)})[name]
        try:
            return const(ast.literal_eval(node.value))
        except (ValueError, TypeError, SyntaxError):
            return self.module_env(module).get(name, EMPTY)  # what top-level code assigns

    def module_env(self, module: str) -> dict[str, frozenset]:
        if module not in self.module_values:
            self.module_values[module] = {}  # an import cycle sees nothing
            frame = Frame(module)
            for node in top_statements(self.project.trees[module].body):
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    self.statement(node, frame)
            self.module_values[module] = frame.env
        return self.module_values[module]

    def binding(self, module: str, node: ast.stmt, seen: frozenset = EMPTY) -> dict:
        """The names an import statement binds, and what they are."""
        if isinstance(node, ast.Import):
            return {
                a.asname or a.name.split(".")[0]: self.member(
                    *(a.name if a.asname else a.name.split(".")[0]).rpartition(".")[::2], seen
                )
                for a in node.names
            }
        base = self.project.import_base(module, node)
        return {a.asname or a.name: self.member(base, a.name, seen) for a in node.names}

    def member(self, module: str, name: str, seen: frozenset = EMPTY) -> frozenset:
        """What ``module.name`` is (``name`` alone where ``module`` is empty)."""
        dotted = f"{module}.{name}" if module else name
        if dotted in self.project.files:
            return frozenset({Module(dotted)})
        if module in self.project.files:
            return self.global_value(module, name, seen)
        return frozenset({External(dotted)})

    def lookup(self, name: str, frame: Frame) -> frozenset:
        if name in frame.env:
            return frame.env[name]
        return self.global_value(frame.module, name)

    def method(self, cls: Class, name: str) -> Func | None:
        node = self.project.names[cls.module][cls.name]
        if any(getattr(n, "name", None) == name for n in node.body):
            return Func(cls.module, f"{cls.name}.{name}")
        for base in node.bases:
            for atom in self.value(base, Frame(cls.module)):
                if isinstance(atom, Class) and (found := self.method(atom, name)):
                    return found
        return None

    # calls
    def invoke(self, fn, self_atoms, args, kwargs, caller: Frame, where: str) -> frozenset:
        """Analyse ``fn`` (a Func or Closure) called with these arguments; what it returns."""
        node = fn.node if isinstance(fn, Closure) else self.project.function(fn)
        if node is None:
            self.consume(union([*args, *kwargs.values()]), where)
            return EMPTY
        spec = node.args
        if self.project.is_source(node):  # its module is run by every stage, even one that
            self.entries.add(fn.module)  # only validates params
            return frozenset({Ref(())})
        positional = [a.arg for a in spec.posonlyargs + spec.args]
        bound = {a.arg: EMPTY for a in [*spec.posonlyargs, *spec.args, *spec.kwonlyargs]}
        given = ([self_atoms] if self_atoms is not None else []) + list(args)
        bound.update(zip(positional, given, strict=False))
        leftover = given[len(positional) :]
        for name, atoms in kwargs.items():
            if name in bound:
                bound[name] |= atoms
            else:
                leftover.append(atoms)
        self.consume(union(leftover), where)
        if caller.module == self.script != fn.module and holds_params(union(bound.values())):
            self.entries.add(fn.module)
        key = (fn, tuple(bound.items()))
        if key not in self.memo and len(self.memo) > MAX_ANALYSES:
            raise AssertionError(f"{where}: more than {MAX_ANALYSES} function analyses")
        if key not in self.memo:
            self.memo[key] = EMPTY  # a recursive call returns nothing new
            frame = Frame(fn.module, {**dict(getattr(fn, "env", ())), **bound})
            for _ in range(2):  # the second pass sees names assigned later (loops, closures)
                if isinstance(node, ast.Lambda):
                    frame.returns |= self.value(node.body, frame)
                else:
                    self.block(node.body, frame)
            self.memo[key] = frozenset(frame.returns)
        return self.memo[key]

    def nested(self, node, frame: Frame) -> frozenset:
        """A nested function or lambda as a value, analysed once as called with unknowns by
        code outside the package (which then gets what it returns)."""
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            self.use(default, frame)
        closure = Closure(frame.module, node, tuple(sorted(frame.env.items())))
        where = self.where(frame, node)
        self.consume(self.invoke(closure, None, [], {}, frame, where), where)
        return frozenset({closure})

    def unknown_call(self, atoms: frozenset, caller: Frame, where: str) -> None:
        """Arguments given to code outside the package are read, except the whole params
        object where the same call takes a package function with a ``Params`` parameter."""
        root = frozenset(a for a in atoms if isinstance(a, Ref) and not a.path)
        taken = False
        for callback in (a for a in atoms if isinstance(a, Func | Closure)):
            node = (
                callback.node if isinstance(callback, Closure) else self.project.function(callback)
            )
            spec = node.args
            names = [
                a.arg
                for a in [*spec.posonlyargs, *spec.args, *spec.kwonlyargs]
                if named(a.annotation, self.project.root_class)
            ]
            if root and names:  # what it returns goes to the outside code
                returned = self.invoke(
                    callback, None, [], dict.fromkeys(names, root), caller, where
                )
                self.consume(returned, where)
                taken = True
        self.consume(atoms - root if taken else atoms, where)

    def parse_args(self, receiver: ast.expr, frame: Frame) -> frozenset:
        """The stage's arguments, parsed by the parser that ``receiver`` (``build_parser()``) builds."""
        if not (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name)):
            return EMPTY
        build = getattr(importlib.import_module(frame.module), receiver.func.id)
        try:
            namespace = vars(build().parse_args(self.argv[1:]))
        except SystemExit:
            raise AssertionError(f"`{shlex.join(self.argv)}`: {frame.module} rejects it") from None
        self.parsed = True
        items = sorted((k, freeze(v)) for k, v in namespace.items() if const(v))
        return frozenset({Parsed(tuple(items))})

    def aside(self, func: ast.expr, frame: Frame) -> bool:
        """Whether ``func`` belongs to a side record (``mlflow.log_params``)."""
        while isinstance(func, ast.Attribute):
            func = func.value
        return isinstance(func, ast.Name) and any(
            isinstance(a, External) and a.name.split(".")[0] in SIDE_RECORDS
            for a in self.lookup(func.id, frame)
        )

    def pydantic_call(self, refs: set[Ref], node: ast.Call, frame: Frame, where: str):
        """``model_copy(update=...)`` and ``model_dump(exclude=..., include=...)`` on params."""
        keywords = {k.arg: k.value for k in node.keywords}
        if node.func.attr == "model_copy":
            replaced, update = {}, keywords.get("update")
            pairs = (
                zip(update.keys, update.values, strict=True)
                if isinstance(update, ast.Dict)
                else [(None, update)]
            )
            for key, value in pairs:
                names = self.value(key, frame) if key is not None else EMPTY
                name = next(iter(names)) if len(names) == 1 else None
                if isinstance(name, Const) and isinstance(name.value, str):
                    replaced[name.value] = self.value(value, frame)
                else:  # ``**more`` or one of several keys: none is known to be replaced
                    self.use(value, frame)
            return frozenset(
                Ref(r.path, tuple(sorted({**dict(r.overrides), **replaced}.items(), key=str)))
                for r in refs
            )
        (exclude_known, exclude), (include_known, include) = (
            self.known(keywords.get(k), frame) for k in ("exclude", "include")
        )
        for ref in refs:
            self.read(
                ref,
                where,
                exclude=frozenset(exclude or ()) if exclude_known else frozenset(),
                include=frozenset(include) if include_known and include is not None else None,
            )
        return EMPTY

    def method_call(self, atom, attr: str, args, kwargs, frame: Frame, where: str):
        """``atom.attr(...)``: (what it returns, whether it could be followed)."""
        if isinstance(atom, Obj) and (method := self.method(atom.cls, attr)):
            return self.invoke(method, frozenset({atom}), args, kwargs, frame, where), True
        if isinstance(atom, Obj) and attr in dict(atom.fields):  # a field holding a function
            return self.call_atoms(dict(atom.fields)[attr], args, kwargs, frame, where)
        if isinstance(atom, Ref) and attr in CLASS_ATTRIBUTES:
            return EMPTY, False
        if attr in CONTAINER_METHODS and not isinstance(atom, Module | External | Parsed | Const):
            held = (
                frozenset({atom})
                if isinstance(atom, Ref)
                else self.elements(frozenset({atom}), where)
            )
            return (frozenset({Tup((EMPTY, held))}) if attr == "items" else held), False
        return self.call_atoms(
            self.attribute(frozenset({atom}), attr, where), args, kwargs, frame, where
        )

    def call_atoms(self, callees, args, kwargs, frame: Frame, where: str):
        """Calling any of ``callees``: (what it returns, whether every one could be followed)."""
        results, followed = set(), bool(callees)
        for callee in callees:
            fields = self.project.fields(callee) if isinstance(callee, Class) else None
            if isinstance(callee, Func | Closure):
                results |= self.invoke(callee, None, args, kwargs, frame, where)
            elif fields is not None:
                bound = {k: self.value(v, Frame(callee.module)) for k, v in fields.items()}
                bound.update(zip(fields, args, strict=False))
                bound.update((k, v) for k, v in kwargs.items() if k in bound)
                self.consume(
                    union(args[len(fields) :])
                    | union(v for k, v in kwargs.items() if k not in bound),
                    where,
                )
                results.add(Obj(callee, tuple(bound.items())))
            elif isinstance(callee, Const):  # calling None (an unset hook) raises: nothing flows
                continue
            elif isinstance(callee, Class):  # a plain class: what __init__ keeps on self is read
                instance = Obj(callee, ())
                if init := self.method(callee, "__init__"):
                    self.invoke(init, frozenset({instance}), args, kwargs, frame, where)
                followed &= init is not None
                results.add(instance)
            else:
                followed = False
        return frozenset(results), followed

    def call(self, node: ast.Call, frame: Frame) -> frozenset:
        where, func = self.where(frame, node), node.func
        if self.aside(func, frame):
            return EMPTY
        attr = func.attr if isinstance(func, ast.Attribute) else None
        if attr == "parse_args" and frame.module == self.script:
            return self.parse_args(func.value, frame)
        base = self.value(func.value, frame) if attr else EMPTY
        refs = {a for a in base if isinstance(a, Ref)}
        if refs and attr in ("model_copy", "model_dump", "model_dump_json"):
            return self.pydantic_call(refs, node, frame, where)
        args, kwargs, spread = [], {}, []
        for arg in node.args:
            (spread if isinstance(arg, ast.Starred) else args).append(self.value(arg, frame))
        for keyword in node.keywords:
            if keyword.arg is None:
                spread.append(self.value(keyword.value, frame))
            else:
                kwargs[keyword.arg] = self.value(keyword.value, frame)
        builtin = isinstance(func, ast.Name) and not self.lookup(func.id, frame) and func.id
        if builtin in TYPE_BUILTINS:
            return EMPTY
        if builtin == "getattr" and len(args) >= 2:
            names = args[1]
            if names and all(isinstance(n, Const) and isinstance(n.value, str) for n in names):
                return union(self.attribute(args[0], n.value, where) for n in names)
        results, followed = set(), bool(base) or not attr
        if attr:
            for atom in base:
                returned, done = self.method_call(atom, attr, args, kwargs, frame, where)
                results |= returned
                followed &= done
        else:
            returned, followed = self.call_atoms(
                self.value(func, frame), args, kwargs, frame, where
            )
            results |= returned
        given = EMPTY if followed else union([*args, *kwargs.values()])
        self.unknown_call(given | union(spread), frame, where)
        return frozenset(results)

    # expressions
    def attribute(self, atoms: frozenset, attr: str, where: str) -> frozenset:
        out: set = set()
        for atom in atoms:
            if isinstance(atom, Ref):
                overrides = dict(atom.overrides)
                if attr in overrides:
                    out |= overrides[attr]
                elif self.project.is_section(atom.path) and attr not in MODEL_ATTRIBUTES:
                    out.add(Ref((*atom.path, attr)))
                elif attr not in CLASS_ATTRIBUTES:  # a key's own attribute, a section's method
                    self.read(atom, where)
            elif isinstance(atom, Parsed):
                out |= const(dict(atom.items)[attr]) if attr in dict(atom.items) else EMPTY
            elif isinstance(atom, Module):
                out |= self.member(atom.name, attr)
            elif isinstance(atom, External):
                out.add(External(f"{atom.name}.{attr}"))
            elif isinstance(atom, Obj):
                fields = dict(atom.fields)
                method = None if attr in fields else self.method(atom.cls, attr)
                if attr in fields:
                    out |= fields[attr]
                elif (function := method and self.project.function(method)) and any(
                    named(d, "property") or named(d, "cached_property")
                    for d in function.decorator_list
                ):
                    out |= self.invoke(method, frozenset({atom}), [], {}, Frame(""), where)
                elif method:  # a bound method handed on
                    self.consume(frozenset({atom}), where)
        return frozenset(out)

    def known(self, node: ast.expr | None, frame: Frame) -> tuple[bool, object]:
        """(True, value) where ``node``'s value is known without running the code."""
        if node is None or isinstance(node, ast.Constant):
            return True, getattr(node, "value", None)
        if isinstance(node, ast.Name | ast.Attribute):
            atoms = self.value(node, frame)
            if len(atoms) == 1 and isinstance(atom := next(iter(atoms)), Const):
                return True, atom.value
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = [self.known(e, frame) for e in node.elts]
            if all(k for k, _ in items):
                return True, tuple(v for _, v in items)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            done, value = self.known(node.operand, frame)
            return done, done and not value
        elif isinstance(node, ast.BoolOp):
            items = [self.known(v, frame) for v in node.values]
            short = isinstance(node.op, ast.Or)  # the value that decides: truthy for ``or``
            if any(k and bool(v) == short for k, v in items):
                return True, short
            if all(k for k, _ in items):
                return True, not short
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARISONS:
            terms = [self.known(t, frame) for t in [node.left, *node.comparators]]
            if all(k for k, _ in terms):
                values = [v for _, v in terms]
                return True, all(
                    COMPARISONS[type(op)](a, b)
                    for op, a, b in zip(node.ops, values, values[1:], strict=False)
                )
        return False, None

    def value(self, node: ast.expr | None, frame: Frame) -> frozenset:
        """What ``node`` may evaluate to; params objects it consumes on the way are read."""
        if node is None:
            return EMPTY
        where = self.where(frame, node)
        if isinstance(node, ast.Constant):
            return const(node.value)
        if isinstance(node, ast.Name):
            return self.lookup(node.id, frame)
        if isinstance(node, ast.Attribute):
            return self.attribute(self.value(node.value, frame), node.attr, where)
        if isinstance(node, ast.Call):
            return self.call(node, frame)
        if isinstance(node, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in node.elts):
            return frozenset({Tup(tuple(self.value(e, frame) for e in node.elts))})
        if isinstance(node, ast.Tuple | ast.List | ast.Set):  # containers hold what they are given
            return union(self.value(e, frame) for e in node.elts)
        if isinstance(node, ast.Starred):
            return self.elements(self.value(node.value, frame), where)
        if isinstance(node, ast.Await):
            return self.value(node.value, frame)
        if isinstance(node, ast.Dict):
            for key in node.keys:
                self.use(key, frame)
            return union(self.value(v, frame) for v in node.values)
        if isinstance(node, ast.BinOp) and any(
            isinstance(side, ast.List | ast.Tuple) for side in (node.left, node.right)
        ):  # ``[params] * n``
            return self.value(node.left, frame) | self.value(node.right, frame)
        if isinstance(node, ast.BoolOp):
            return union(self.value(v, frame) for v in node.values)
        if isinstance(node, ast.IfExp):
            done, truth = self.known(node.test, frame)
            if done:
                return self.value(node.body if truth else node.orelse, frame)
            self.use(node.test, frame)
            return self.value(node.body, frame) | self.value(node.orelse, frame)
        if isinstance(node, ast.NamedExpr):
            atoms = self.value(node.value, frame)
            self.assign(node.target, atoms, frame)
            return atoms
        if isinstance(node, ast.Subscript):
            base, (done, index) = self.value(node.value, frame), self.known(node.slice, frame)
            self.use(node.slice, frame)
            items = set()
            for atom in base:
                if (
                    isinstance(atom, Tup)
                    and done
                    and isinstance(index, int)
                    and -len(atom.items) <= index < len(atom.items)
                ):
                    items |= atom.items[index]
                else:
                    items |= self.elements(frozenset({atom}), where)
            return frozenset(items)
        if isinstance(node, ast.Lambda):
            return self.nested(node, frame)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            inner = Frame(frame.module, frame.env)
            for generator in node.generators:
                for name in ast.walk(generator.target):
                    if isinstance(name, ast.Name):
                        inner.env.pop(name.id, None)
                iterated = self.elements(self.value(generator.iter, inner), where)
                self.assign(generator.target, iterated, inner)
                for condition in generator.ifs:
                    self.use(condition, inner)
            self.use(getattr(node, "key", None), inner)
            return self.value(getattr(node, "value", None) or node.elt, inner)
        identity = isinstance(node, ast.Compare) and all(
            isinstance(op, ast.Is | ast.IsNot) for op in node.ops
        )  # ``x is None`` reads nothing of x
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child, frame) if identity else self.use(child, frame)
        return EMPTY

    # statements
    def assign(self, target: ast.expr, atoms: frozenset, frame: Frame) -> None:
        where = self.where(frame, target)
        if isinstance(target, ast.Name):
            frame.env[target.id] = frame.env.get(target.id, EMPTY) | atoms
        elif isinstance(target, ast.Tuple | ast.List):
            if any(isinstance(e, ast.Starred) for e in target.elts):
                parts = [self.elements(atoms, where)] * len(target.elts)
            else:
                parts = [EMPTY] * len(target.elts)
                for atom in atoms:  # a tuple's items in order, else what a container holds
                    if isinstance(atom, Tup) and len(atom.items) == len(parts):
                        parts = [p | item for p, item in zip(parts, atom.items, strict=True)]
                    else:
                        held = self.elements(frozenset({atom}), where)
                        parts = [p | held for p in parts]
            for element, part in zip(target.elts, parts, strict=True):
                self.assign(element, part, frame)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, atoms, frame)
        else:  # an attribute or an item of something
            self.consume(atoms, where)

    def block(self, statements: list[ast.stmt], frame: Frame) -> None:
        for statement in statements:
            self.statement(statement, frame)

    def statement(self, node: ast.stmt, frame: Frame) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                self.use(decorator, frame)
            frame.env[node.name] = frame.env.get(node.name, EMPTY) | self.nested(node, frame)
        elif isinstance(node, ast.ClassDef):
            frame.env[node.name] = EMPTY
        elif isinstance(node, ast.Return):
            frame.returns |= self.value(node.value, frame)
        elif isinstance(node, ast.Assign):
            atoms = self.value(node.value, frame)
            for target in node.targets:
                self.assign(target, atoms, frame)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.assign(node.target, self.value(node.value, frame), frame)
        elif isinstance(node, ast.Expr):  # a value thrown away is not read
            self.value(node.value, frame)
        elif isinstance(node, ast.AugAssign):
            self.use(node.value, frame)
        elif isinstance(node, ast.If):
            done, truth = self.known(node.test, frame)
            if not done:
                self.use(node.test, frame)
            if not done or truth:
                self.block(node.body, frame)
            if not done or not truth:
                self.block(node.orelse, frame)
        elif isinstance(node, ast.For | ast.AsyncFor):
            iterated = self.elements(self.value(node.iter, frame), self.where(frame, node))
            self.assign(node.target, iterated, frame)
            self.block(node.body + node.orelse, frame)
        elif isinstance(node, ast.While):
            self.use(node.test, frame)
            self.block(node.body + node.orelse, frame)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                atoms = self.value(item.context_expr, frame)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, atoms, frame)
            self.block(node.body, frame)
        elif isinstance(node, ast.Try | ast.TryStar):
            self.block(node.body, frame)
            for handler in node.handlers:
                self.use(handler.type, frame)
                if handler.name:
                    frame.env[handler.name] = EMPTY
                self.block(handler.body, frame)
            self.block(node.orelse + node.finalbody, frame)
        elif isinstance(node, ast.Raise | ast.Assert):
            for child in ast.iter_child_nodes(node):
                self.use(child, frame)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            frame.env.update(self.binding(frame.module, node))
        elif isinstance(node, ast.Match):
            self.use(node.subject, frame)
            for case in node.cases:
                self.block(case.body, frame)


def missing_modules(project: Project, codes: dict[str, StageCode]) -> dict[str, list[str]]:
    """Per stage, the modules it imports that its deps do not cover."""
    missing = {}
    for name, code in codes.items():
        declared = project.declared_deps(project.stages[name])
        files = (project.files[m] for m in code.modules())
        missing[name] = sorted(
            f.relative_to(project.root).as_posix()
            for f in files
            if not any(f == d or d in f.parents for d in declared)
        )
    return missing


def missing_params(project: Project, codes: dict[str, StageCode]) -> dict[str, dict[str, str]]:
    """Per stage, the params keys (or whole sections) it reads but does not declare, with
    where each is first read."""
    missing = {}
    for name, code in codes.items():
        declared = project.declared_params(project.stages[name])
        undeclared = {
            key
            for key in code.reads
            if not any(d in ("", key) or key.startswith(f"{d}.") for d in declared)
        }
        missing[name] = {
            key: code.reads[min(k for k in undeclared if k == key or k.startswith(f"{key}."))]
            for key in project.compact(undeclared)
        }
    return missing


def analyse(project: Project) -> dict[str, StageCode]:
    return {name: StageCode(project, stage["cmd"]) for name, stage in project.stages.items()}


@pytest.fixture(scope="module")
def project() -> Project:
    return Project(PROJECT_ROOT)


@pytest.fixture(scope="module")
def stage_code(project) -> dict[str, StageCode]:
    return analyse(project)


def test_every_stage_depends_on_the_modules_it_imports(project, stage_code):
    missing = missing_modules(project, stage_code)
    assert not any(missing.values()), (
        "stages import modules dvc.yaml does not list as deps:\n"
        + "\n".join(f"  {name}: {', '.join(paths)}" for name, paths in missing.items() if paths)
    )


def test_every_stage_declares_the_params_keys_it_reads(project, stage_code):
    missing = missing_params(project, stage_code)
    assert not any(missing.values()), (
        "stages read params keys dvc.yaml does not list under params "
        "(a section covers its keys; where each is first read):\n"
        + "\n".join(
            f"  {name}: {', '.join(f'{key} ({where})' for key, where in keys.items())}"
            for name, keys in missing.items()
            if keys
        )
    )


TOY = {
    "pyproject.toml": '[project]\nname = "toy"\nscripts = {toy = "toy.cli:main"}\n',
    "params.yaml": """
        data: {root: raw, unused: 1}
        train: {seed: 1, epochs: 3, lr: 0.1}
        model: {kind: a, width: 4, depth: 2}
        extra: {a: 1, b: 2}
        log: {experiment: x}
        checks: {strict: true}
    """,
    "dvc.yaml": """
        stages:
          prepare: {cmd: toy prepare, deps: [src/toy], params: [data]}
          fit: {cmd: toy fit, deps: [src/toy/fit.py], params: [train, model.kind]}
    """,
    "src/toy/__init__.py": "",
    "src/toy/config.py": """
        class Params:
            data: dict
            train: dict
            model: dict
            extra: dict
            log: dict
            checks: dict

        def load_params() -> Params: ...
    """,
    "src/toy/cli.py": """
        import argparse
        from toy.config import load_params

        def build_parser():
            parser = argparse.ArgumentParser()
            commands = parser.add_subparsers(dest="command")
            for name in ("prepare", "fit", "other"):
                commands.add_parser(name)
            return parser

        def main(argv=None):
            args = build_parser().parse_args(argv)
            params = load_params()
            if args.command == "prepare":
                from toy import prepare as stage
            elif args.command == "fit":
                from toy import fit as stage
            else:
                from toy import other as stage
            stage.run(params)
    """,
    "src/toy/prepare.py": "def run(params):\n    print(params.data.root)\n",
    "src/toy/other.py": "def run(params):\n    print(params.log.experiment)\n",
    "src/toy/kinds.py": """
        from toy import kind_a

        KINDS = {"a": kind_a.KIND, "b": kind_a.LOUD}
    """,
    "src/toy/kind_a.py": """
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Kind:
            fit: object
            hook: object = None

        def make_fit(name):
            def fit(params):
                return getattr(params.extra, name)
            return fit

        def announce(params):
            print(params.train.seed)

        KIND, LOUD = (Kind(fit=make_fit("a"), hook=hook) for hook in (None, announce))
    """,
    "src/toy/fit.py": """
        import json
        from concurrent.futures import ProcessPoolExecutor
        from dataclasses import dataclass

        import mlflow
        from toy.config import Params
        from toy.kinds import KINDS

        @dataclass
        class Holder:
            section: object

            def save(self):
                return self.section.model_dump(exclude={"depth"})

        def work(job, params: Params):
            return params.data.root

        def checked(params: Params) -> Params:
            assert params.checks.strict
            return params

        def run(params):
            params = checked(params)
            mlflow.log_params(params.model_dump())
            t = params.train
            print(t.seed, json.loads("{}").width)
            longer = params.train.model_copy(update={"epochs": 10})
            print(longer.epochs + longer.lr, longer)
            Holder(params.log)
            Holder(params.model).save()
            with ProcessPoolExecutor() as pool:
                pool.map(work, [1, 2], [params] * 2)
            kind = KINDS[params.model.kind]
            print(kind.fit(params))
            if kind.hook:
                kind.hook(params)
    """,
}


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Project:
    """A tiny project whose stages read params in each way the analysis follows."""
    for name, text in TOY.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield Project(tmp_path)
    for module in [m for m in sys.modules if m == "toy" or m.startswith("toy.")]:
        del sys.modules[module]


def test_the_analysis_finds_what_each_stage_reads_and_imports(toy):
    codes = analyse(toy)
    assert {name: sorted(code.reads) for name, code in codes.items()} == {
        "prepare": ["data.root"],
        "fit": [  # not: train.epochs (replaced), log (kept, not used), model.depth (excluded),
            # data.unused, extra.b
            "checks.strict",  # in a function that takes and returns params
            "data.root",  # by the callback the process pool runs
            "extra.a",  # getattr in a closure, reached through a registry of dataclasses
            "model.kind",
            "model.width",  # model_dump(exclude=depth) in a dataclass method
            "train.lr",
            "train.seed",  # t = params.train; t.seed
        ],
    }
    assert {name: sorted(code.modules()) for name, code in codes.items()} == {
        "prepare": ["toy", "toy.config", "toy.prepare"],  # not toy.cli, toy.fit, toy.other
        "fit": ["toy", "toy.config", "toy.fit", "toy.kind_a", "toy.kinds"],
    }
    assert missing_modules(toy, codes) == {
        "prepare": [],
        "fit": [
            "src/toy/__init__.py",
            "src/toy/config.py",
            "src/toy/kind_a.py",
            "src/toy/kinds.py",
        ],
    }
    assert {name: list(keys) for name, keys in missing_params(toy, codes).items()} == {
        "prepare": [],
        "fit": ["data.root", "model.width", "extra.a", "checks"],
    }
