"""How a Python callable travels to a node.

As pp does, a function goes as source: its own plus that of ``depfuncs``; ``modules`` are
imported first. Better than pp:

* functions from installed modules (the standard library, site-packages) and builtins go as an
  importable reference (``"math:sqrt"``) and need no source;
* lambdas, nested functions and staticmethods work: their source is cut out of the defining file;
* a closure's captured variables travel (pickled) and a variable that cannot be pickled raises an
  error that names it; so do the module-level values (constants, tables) the function reads (a
  big one goes once, see _pp._SentOnce);
* modules, functions and classes the function refers to by a global name are found and sent
  (pp needed them in ``modules``/``depfuncs``);
* a bound method ships its class's source and goes as ``Class.method`` with the instance first in
  the arguments, as pp does;
* classes (and functions) that the node cannot import, defined in ``__main__`` or in a module of
  the program, travel as source with the function when their objects are in the arguments, however
  deeply nested (``dumps_noting_sources``, ``with_sources``): once per link and set of classes.
"""

from __future__ import annotations

import builtins
import collections
import io
import linecache
import os
import pickle
import select
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

    import ast  # (imported where used: the common case, a plain def, needs it not)

from ._refs import Ref


def _installed_paths() -> List[str]:
    """sysconfig.get_paths()'s stdlib, platstdlib, purelib and platlib, found without importing
    sysconfig where site has run (its import and get_paths took ~2 ms of `import ppgate`): the
    folder of os.py, the one above the extension modules' lib-dynload, and site's packages."""
    site = sys.modules.get("site")
    getsitepackages = getattr(site, "getsitepackages", None)  # (not in old virtualenvs' site.py)
    if getsitepackages is None:
        import sysconfig
        return [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths = [os.path.dirname(os.__file__)] + list(getsitepackages())
    dynload = os.path.dirname(getattr(select, "__file__", "") or "")
    if os.path.basename(dynload) == "lib-dynload":
        paths.append(os.path.dirname(dynload))
    return paths


_INSTALLED_PREFIXES = tuple(
    os.path.join(os.path.realpath(p), "")
    for p in set(_installed_paths()) | {p for p in sys.path if "site-packages" in p or "dist-packages" in p}
    if p)
_MAX_DEPENDENCIES = 200


class FunctionSpec:
    """What the node needs to define a function, computed once per function.

    ``key`` identifies it for the session's fn_id table; ``definition`` is sent the first time;
    ``closure`` lists captured variable names whose values go with every job.
    """

    __slots__ = ("key", "definition", "closure", "closure_cells", "value_names", "value_globals",
                 "shipped", "definition_size")

    def __init__(self, key: Hashable, definition: Dict[str, Any], closure: Tuple[str, ...] = (),
                 closure_cells: Optional[Tuple[Any, ...]] = None, value_names: Tuple[str, ...] = (),
                 shipped: frozenset[int] = frozenset(), value_globals: Optional[Dict[str, Any]] = None) -> None:
        self.key = key
        self.definition = definition
        self.closure = closure
        self.closure_cells = closure_cells
        self.value_names = value_names  # plain values the function uses, taken from globals=
        self.shipped = shipped  # ids of the classes and functions whose source the definition has
        self.value_globals = value_globals  # the function's own module globals, for value_names
        self.definition_size = message_size(definition)  # bytes it adds to a message, about


def own_modules() -> List[str]:
    """The names of the modules imported here from files outside the installed prefixes (not
    ppgate's): the program's own, whose classes and functions travel by source."""
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or name == "__main__" or name == "ppgate" or name.startswith("ppgate."):
            continue
        if not _under_installed_prefix(path):
            names.append(name)
    return names


def _under_installed_prefix(path: str) -> bool:
    # The path as given first: realpath costs a system call per component.
    return path.startswith(_INSTALLED_PREFIXES) or os.path.realpath(path).startswith(_INSTALLED_PREFIXES)


def _is_installed(module_name: Optional[str]) -> bool:
    if not module_name or module_name == "__main__":
        return False
    if module_name in sys.builtin_module_names or module_name == "builtins":
        return True
    module = sys.modules.get(module_name.partition(".")[0])
    path = getattr(sys.modules.get(module_name), "__file__", None) or getattr(module, "__file__", None)
    if not path:
        return module is not None and module_name.partition(".")[0] in sys.builtin_module_names
    return _under_installed_prefix(str(path))


def _dedented_source(obj: Any) -> str:
    if isinstance(obj, types.FunctionType):
        cut = _def_cut_by_indentation(obj)
        if cut is not None:
            return cut
    import inspect
    try:
        return _dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send %r: its source is not available (%s); define it in a file, "
                         "or make it importable on the node" % (obj, exc)) from None


def _def_cut_by_indentation(func: types.FunctionType) -> Optional[str]:
    """An undecorated def's source, from its first line to the next line indented no deeper, or
    None (inspect.getsource then). inspect's tokenizer costs milliseconds on its first use, on
    the way to a program's first result. The cut is right when it compiles: ending it inside a
    string, a bracket or a continued line would not."""
    code = func.__code__
    lines = linecache.getlines(code.co_filename, func.__globals__)
    start = code.co_firstlineno - 1
    if not 0 <= start < len(lines):
        return None
    first = lines[start]
    body = first.lstrip()
    if not body.startswith(("def ", "async def ")) or not body[4 if body[0] == "d" else 10:].lstrip().startswith(func.__name__ + "("):
        return None
    indent = len(first) - len(body)
    end = start + 1
    for i in range(start + 1, len(lines)):
        text = lines[i].strip()
        if not text:
            continue
        if len(lines[i]) - len(lines[i].lstrip()) <= indent:
            if text.startswith("#"):
                continue  # a comment out of the block does not end it (nor belong to it)
            break
        end = i + 1
    # (a module's function, the common case, has nothing to dedent)
    source = "".join(lines[start:end]) if indent == 0 else _dedent("".join(lines[start:end]))
    try:
        compile(source, code.co_filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return source


def _dedent(text: str) -> str:
    import textwrap  # (here: most programs send only their modules' functions, not indented)
    return textwrap.dedent(text)


def _strip_decorators(source: str) -> str:
    """The def without its decorators (staticmethod, classmethod...): a plain module-level def."""
    import ast
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
        return source
    lines = source.splitlines(True)
    return _dedent("".join(lines[node.lineno - 1:]))


def _lambda_source(func: types.FunctionType) -> str:
    """`_ppgate_lambda = <the lambda>`, cut out of the lines that define it."""
    import ast
    import inspect
    try:
        lines, _ = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send this lambda: its source is not available (%s)" % exc) from None
    text = _dedent("".join(lines))
    candidates: List[Tuple[str, ast.Lambda]] = []
    for attempt in (text, "(\n" + text + "\n)", text.rstrip().rstrip(",").rstrip(")")):
        try:
            tree = ast.parse(attempt)
        except SyntaxError:
            continue
        candidates = [(attempt, n) for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        if candidates:
            break
    code = func.__code__
    for attempt, node in candidates:
        segment = ast.get_source_segment(attempt, node)
        if segment is None:
            continue
        compiled = compile(segment, "<lambda>", "eval")
        inner = next(c for c in compiled.co_consts if isinstance(c, types.CodeType))
        if (inner.co_code, inner.co_consts, inner.co_names, inner.co_varnames) == \
                (code.co_code, code.co_consts, code.co_names, code.co_varnames):
            return "_ppgate_lambda = (%s)\n" % segment
    raise ValueError("cannot find the source of lambda %r; define it with def instead" % func)


def _source_keeping_module(obj: Any, source: Optional[str] = None) -> str:
    """The source of a top-level function or class (`source`, when the caller has it already),
    plus a line that gives it back its module's name when that is not __main__: pickles then
    name it as the client does (the worker makes that module name resolve to the job's
    namespace)."""
    if source is None:
        source = _dedented_source(obj)
    module = getattr(obj, "__module__", "__main__")
    if module != "__main__" and "<locals>" not in obj.__qualname__ and "." not in obj.__qualname__:
        source += "\n%s.__module__ = %r\n" % (obj.__name__, module)
    return source


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _import_for(name: str, module: types.ModuleType) -> str:
    if module.__name__ == name:
        return "import " + name
    return "import %s as %s" % (module.__name__, name)


class _Collector:
    """Gathers the sources and imports a function needs, following global names."""

    def __init__(self) -> None:
        self.sources: List[str] = []
        self.imports: List[str] = []
        self.values: List[str] = []
        self.seen: set[int] = set()

    def add_object(self, name: str, value: Any) -> bool:
        if isinstance(value, types.ModuleType):
            statement = _import_for(name, value)
            if statement not in self.imports:
                self.imports.append(statement)
            return True
        if isinstance(value, (types.FunctionType, type)) and id(value) not in self.seen:
            self.seen.add(id(value))
            if len(self.seen) > _MAX_DEPENDENCIES:
                raise ValueError("the function refers to more than %d other functions" % _MAX_DEPENDENCIES)
            module = getattr(value, "__module__", None)
            if _is_installed(module):
                if value.__name__ == name:
                    self.imports.append("from %s import %s" % (module, name))
                else:
                    self.imports.append("from %s import %s as %s" % (module, value.__name__, name))
                return True
            if isinstance(value, types.FunctionType) and value.__name__ == "<lambda>":
                return False
            if isinstance(value, type):
                # Bases first: a class statement needs them defined.
                self.add_bases(value)
                self.sources.append(_source_keeping_module(value))
                self.follow_class(value)
            else:
                self.sources.append(_source_keeping_module(value))
                self.follow(value.__code__, value.__globals__)
            return True
        if isinstance(value, (types.FunctionType, type)):
            return True
        if name not in self.values:
            self.values.append(name)
        return False

    def add_bases(self, cls: type) -> None:
        for base in cls.__bases__:
            if base is not object:
                self.add_object(base.__name__, base)

    def follow_class(self, cls: type) -> None:
        """Follows the global names its methods use (its bases are added by add_bases)."""
        for method in vars(cls).values():
            if isinstance(method, (staticmethod, classmethod)):
                method = method.__func__
            if isinstance(method, types.FunctionType):
                self.follow(method.__code__, method.__globals__)

    def follow(self, code: types.CodeType, namespace: Mapping[str, Any]) -> None:
        for name in sorted(_global_names(code)):
            if name in namespace and not name.startswith("__"):
                self.add_object(name, namespace[name])


def describe(func: Callable[..., Any], depfuncs: Tuple[Any, ...] = (), modules: Tuple[str, ...] = (),
             user_globals: Optional[Dict[str, Any]] = None) -> Tuple[FunctionSpec, Any]:
    """Returns (FunctionSpec, first_arg) for `func`; first_arg is the instance of a bound method
    (to go first in the arguments), or None. With `user_globals` (pp's globals=), global names
    are looked up there first, then in the function's module, and the plain values the function
    uses travel too."""
    first_arg: Any = None
    func_obj: Any
    entry_owner: Optional[type]
    if isinstance(func, types.MethodType):
        owner = func.__self__
        cls = owner if isinstance(owner, type) else type(owner)
        if not isinstance(owner, type):
            first_arg = owner
        func_obj = func.__func__
        entry_owner = cls
    else:
        func_obj = func
        entry_owner = None

    key = (func_obj, entry_owner, depfuncs, modules, user_globals is not None)
    definition: Dict[str, Any] = {"modules": list(modules)}

    if isinstance(func_obj, (types.BuiltinFunctionType, types.BuiltinMethodType)) or not isinstance(
            func_obj, types.FunctionType):
        if not callable(func_obj):
            raise TypeError("%r is not callable" % (func,))
        module = getattr(func_obj, "__module__", None) or "builtins"
        qualname = getattr(func_obj, "__qualname__", None) or getattr(func_obj, "__name__", None)
        if not qualname or module == "__main__":
            raise TypeError("cannot send %r: pass a function, a method or a lambda" % (func,))
        definition["function"] = "%s:%s" % (module, qualname)
        if entry_owner is not None and not _is_installed(entry_owner.__module__):
            raise TypeError("cannot send %r" % (func,))
        return FunctionSpec(key, definition), first_arg

    if entry_owner is not None:
        if _is_installed(entry_owner.__module__):
            definition["function"] = "%s:%s.%s" % (entry_owner.__module__, entry_owner.__qualname__,
                                                   func_obj.__name__)
            return FunctionSpec(key, definition), first_arg
        collector = _Collector()
        collector.seen.add(id(entry_owner))
        main_source = _source_keeping_module(entry_owner)
        collector.add_bases(entry_owner)
        collector.follow_class(entry_owner)
        definition["function"] = "%s.%s" % (entry_owner.__name__, func_obj.__name__)
    elif _is_installed(func_obj.__module__) and "<locals>" not in func_obj.__qualname__ \
            and func_obj.__name__ != "<lambda>":
        definition["function"] = "%s:%s" % (func_obj.__module__, func_obj.__qualname__)
        return FunctionSpec(key, definition), first_arg
    else:
        collector = _Collector()
        collector.seen.add(id(func_obj))
        if func_obj.__name__ == "<lambda>":
            main_source = _lambda_source(func_obj)
            definition["function"] = "_ppgate_lambda"
        else:
            main_source = _dedented_source(func_obj)
            if main_source.lstrip().startswith("@"):
                main_source = _strip_decorators(main_source)
            elif "." not in func_obj.__qualname__ and "<locals>" not in func_obj.__qualname__:
                main_source = _source_keeping_module(func_obj, main_source)
            definition["function"] = func_obj.__name__
        # pp's globals= is looked at before the function's own module, not instead of it (pathos
        # passes its own module's globals).
        collector.follow(func_obj.__code__, func_obj.__globals__ if user_globals is None
                         else collections.ChainMap(user_globals, func_obj.__globals__))

    for dep in depfuncs:
        if isinstance(dep, types.ModuleType):
            collector.add_object(dep.__name__, dep)
        elif isinstance(dep, (types.FunctionType, type)):
            if id(dep) not in collector.seen:
                collector.seen.add(id(dep))
                collector.sources.append(_source_keeping_module(dep))
        else:
            raise TypeError("depfuncs must hold functions or classes, not %r" % (dep,))

    closure_names: Tuple[str, ...] = ()
    cells = None
    if func_obj.__closure__:
        closure_names = func_obj.__code__.co_freevars
        cells = func_obj.__closure__
    definition["modules"] = list(modules) + [i for i in collector.imports if i not in modules]
    # Dependencies first: a class defined in the main source may derive from one of them.
    definition["source"] = "\n".join(collector.sources + [main_source])
    return FunctionSpec(key, definition, closure_names, cells, tuple(collector.values),
                        frozenset(collector.seen), func_obj.__globals__), first_arg


# Objects of these exact types never name a class of the program: pickling them needs no look.
PLAIN_TYPES = frozenset((int, float, complex, str, bytes, bool, type(None)))


def all_plain(values: Tuple[Any, ...]) -> bool:
    """Whether every value is of PLAIN_TYPES. (A loop: all() over a generator cost a job's
    arguments ~0.15 us more.)"""
    for value in values:
        if type(value) not in PLAIN_TYPES:
            return False
    return True


def _needs_source(obj: Any) -> bool:
    """True for a class or function the node cannot import by name: defined in __main__ or in a
    module of the program (not the standard library or site-packages)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    return (isinstance(module, str) and not _is_installed(module) and "<locals>" not in qualname
            and "." not in qualname and not (isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>"))


class _TakesRefs(Exception):
    """Raised by a pickler without a persistent_id that meets a Ref."""


class _NotingPickler(pickle.Pickler):
    """A pickler that notes, in `found`, the classes of the objects it pickles (and the classes and
    functions pickled themselves) that need their source on the node. The first Ref stops it
    (_TakesRefs): a persistent_id is called for every object, ints included, so only pickles that
    hold a Ref pay for one (_RefPickler)."""

    def __init__(self, file: io.BytesIO, found: List[Any], buffer_callback: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback)
        self.found = found
        self.looked_at: set[Any] = set()

    def reducer_override(self, obj: Any) -> Any:
        # Called for every object but the plain ones (pickle's fast paths); pickling goes on as usual.
        if type(obj) is Ref:
            raise _TakesRefs  # (with a persistent_id, a Ref never gets here)
        target = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if target not in self.looked_at:
            self.looked_at.add(target)
            if _needs_source(target):
                self.found.append(target)
        return NotImplemented


def message_size(fields: Dict[str, Any]) -> int:
    """About how many bytes fields take in a session message, never less: base64 and names are
    ASCII; json.dumps writes other text as escapes of up to 12 bytes a character."""
    size = 256
    for value in fields.values():
        if isinstance(value, str):
            size += (len(value) if value.isascii() else 12 * len(value)) + 8
        elif isinstance(value, list):
            size += sum(len(v) + 8 for v in value if isinstance(v, str))
        elif isinstance(value, dict):
            size += 32 * len(value.get("parts", ())) + 128
        else:
            size += 32
    return size


class _RefPickler(_NotingPickler):
    """A _NotingPickler whose persistent_id turns Refs into what `ref_id` makes of them."""

    def __init__(self, file: io.BytesIO, found: List[Any], buffer_callback: Optional[Callable[[Any], Any]],
                 ref_id: Callable[[Any], Any]) -> None:
        super().__init__(file, found, buffer_callback)
        self._ref_id = ref_id

    def persistent_id(self, obj: Any) -> Any:
        return self._ref_id(obj)


def dumps_noting_sources(value: Any, found: List[Any], buffers: Optional[List[pickle.PickleBuffer]] = None,
                         persistent_id: Any = None) -> bytes:
    """Pickles `value` (pickle.HIGHEST_PROTOCOL); appends to `found` the classes and functions in
    it that must travel as source. With `buffers`, out-of-band buffers go there (pickle protocol
    5). A Ref in `value` becomes what `persistent_id` makes of it (without one, a Ref raises
    TypeError)."""
    if type(value) is tuple and all_plain(value):
        # The common case: nothing to look for, and no buffers.
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    buffer = io.BytesIO()
    noted = len(found)
    callback = None if buffers is None else buffers.append
    try:
        _NotingPickler(buffer, found, callback).dump(value)
    except _TakesRefs:
        if persistent_id is None:
            raise TypeError("a ppgate Ref is taken only in a job's arguments, not in the value "
                            "put itself") from None
        del found[noted:]
        if buffers is not None:
            del buffers[:]
        buffer = io.BytesIO()
        _RefPickler(buffer, found, callback, persistent_id).dump(value)
    return buffer.getvalue()


def with_sources(spec: FunctionSpec, objects: Sequence[Any]) -> FunctionSpec:
    """A FunctionSpec that is `spec` whose source also defines `objects` (classes and functions
    the job's arguments carry), with the classes they derive from; `spec` when it has them all."""
    missing = [o for o in objects if id(o) not in spec.shipped]
    if not missing:
        return spec
    collector = _Collector()
    collector.seen |= spec.shipped
    for obj in missing:
        collector.add_object(obj.__name__, obj)
    definition = dict(spec.definition)
    entry = definition["function"]
    own_source = definition.get("source", "")
    if ":" in entry:
        # An importable function carries no source; with sources it must be defined in them.
        module, _, qualname = entry.partition(":")
        own_source = "import %s as _ppgate_module\n_ppgate_entry = _ppgate_module.%s\n" % (module, qualname)
        definition["function"] = "_ppgate_entry"
    definition["source"] = "\n".join(collector.sources + [own_source])
    definition["modules"] = list(definition.get("modules", ())) + [
        i for i in collector.imports if i not in definition.get("modules", ())]
    return FunctionSpec((spec.key, tuple(missing)), definition, spec.closure, spec.closure_cells,
                        spec.value_names, spec.shipped | frozenset(collector.seen), spec.value_globals)


def closure_values(function: FunctionSpec, user_globals: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The names to set in the job's namespace: the closure's captured values, then `globals=`.
    Raises ValueError naming a captured variable that cannot be pickled."""
    values: Dict[str, Any] = {}
    for name, cell in zip(function.closure, function.closure_cells or ()):
        try:
            value = cell.cell_contents
        except ValueError:
            raise ValueError("closure variable %r is not bound yet" % name) from None
        if isinstance(value, (types.FunctionType, type, types.ModuleType)):
            raise ValueError("closure variable %r is a %s; define it at module level so it can be "
                             "sent as source" % (name, type(value).__name__))
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - the message names the variable
            raise ValueError("closure variable %r cannot be sent: %s: %s"
                             % (name, type(exc).__name__, exc)) from None
        values[name] = value
    # Module-level values the function reads (constants, tables): from globals= first, then from
    # the function's own module, as they are now.
    own = function.value_globals or {}
    for name in function.value_names:
        if user_globals is not None and name in user_globals:
            values[name] = user_globals[name]
        elif name in own:
            values[name] = own[name]
    return values


def name_unpicklable(values: Mapping[str, Any], exc: Exception) -> Exception:
    """A ValueError naming the variable of `values` that cannot be pickled (after `exc`)."""
    for name, value in values.items():
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as inner:  # noqa: BLE001 - the message names the variable
            return ValueError("global variable %r that the function uses cannot be sent: %s: %s"
                              % (name, type(inner).__name__, inner))
    return exc
