"""How a Python callable travels to a node.

As pp does, a function goes as source: its own plus that of ``depfuncs``; ``modules`` are
imported first. Better than pp:

* functions from installed modules (the standard library, site-packages) and builtins go as an
  importable reference (``"math:sqrt"``) and need no source;
* lambdas, nested functions and staticmethods work: their source is cut out of the defining file;
* a closure's captured variables travel (pickled) and a variable that cannot be pickled raises an
  error that names it;
* modules, functions and classes the function refers to by a global name are found and sent
  (pp needed them in ``modules``/``depfuncs``);
* a bound method ships its class's source and goes as ``Class.method`` with the instance first in
  the arguments, as pp does.
"""

import ast
import builtins
import inspect
import os
import pickle
import sys
import sysconfig
import textwrap
import types

_INSTALLED_PREFIXES = tuple(
    os.path.join(os.path.realpath(p), "")
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {p for p in sys.path if "site-packages" in p or "dist-packages" in p}
    if p)
_MAX_DEPENDENCIES = 200


class FunctionSpec:
    """What the node needs to define a function, computed once per function.

    ``key`` identifies it for the session's fn_id table; ``definition`` is sent the first time;
    ``closure`` lists captured variable names whose values go with every job.
    """

    __slots__ = ("key", "definition", "closure", "closure_cells", "value_names")

    def __init__(self, key, definition, closure=(), closure_cells=None, value_names=()):
        self.key = key
        self.definition = definition
        self.closure = closure
        self.closure_cells = closure_cells
        self.value_names = value_names  # plain values the function uses, taken from globals=


def _is_installed(module_name):
    if not module_name or module_name == "__main__":
        return False
    if module_name in sys.builtin_module_names or module_name == "builtins":
        return True
    module = sys.modules.get(module_name.partition(".")[0])
    path = getattr(sys.modules.get(module_name), "__file__", None) or getattr(module, "__file__", None)
    if not path:
        return module is not None and module_name.partition(".")[0] in sys.builtin_module_names
    return os.path.realpath(path).startswith(_INSTALLED_PREFIXES)


def _dedented_source(obj):
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send %r: its source is not available (%s); define it in a file, "
                         "or make it importable on the node" % (obj, exc)) from None


def _strip_decorators(source):
    """The def without its decorators (staticmethod, classmethod...): a plain module-level def."""
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.decorator_list:
        return source
    lines = source.splitlines(True)
    return textwrap.dedent("".join(lines[node.lineno - 1:]))


def _lambda_source(func):
    """`_ppgate_lambda = <the lambda>`, cut out of the lines that define it."""
    try:
        lines, _ = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise ValueError("cannot send this lambda: its source is not available (%s)" % exc) from None
    text = textwrap.dedent("".join(lines))
    candidates = []
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
        compiled = compile(segment, "<lambda>", "eval")
        inner = next(c for c in compiled.co_consts if isinstance(c, types.CodeType))
        if (inner.co_code, inner.co_consts, inner.co_names, inner.co_varnames) == \
                (code.co_code, code.co_consts, code.co_names, code.co_varnames):
            return "_ppgate_lambda = (%s)\n" % segment
    raise ValueError("cannot find the source of lambda %r; define it with def instead" % func)


def _source_keeping_module(obj):
    """The source of a top-level function or class, plus a line that gives it back its module's
    name when that is not __main__: pickles then name it as the client does (the worker makes
    that module name resolve to the job's namespace)."""
    source = _dedented_source(obj)
    module = getattr(obj, "__module__", "__main__")
    if module != "__main__" and "<locals>" not in obj.__qualname__ and "." not in obj.__qualname__:
        source += "\n%s.__module__ = %r\n" % (obj.__name__, module)
    return source


def _global_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _import_for(name, module):
    if module.__name__ == name:
        return "import " + name
    return "import %s as %s" % (module.__name__, name)


class _Collector:
    """Gathers the sources and imports a function needs, following global names."""

    def __init__(self, collect_values=False):
        self.collect_values = collect_values
        self.sources = []
        self.imports = []
        self.values = []
        self.seen = set()

    def add_object(self, name, value):
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
            self.sources.append(_source_keeping_module(value))
            if isinstance(value, types.FunctionType):
                self.follow(value.__code__, value.__globals__)
            elif isinstance(value, type):
                self.follow_class(value)
            return True
        if isinstance(value, (types.FunctionType, type)):
            return True
        if self.collect_values and name not in self.values:
            self.values.append(name)
        return False

    def follow_class(self, cls):
        for base in cls.__bases__:
            if base is not object:
                self.add_object(base.__name__, base)
        for method in vars(cls).values():
            if isinstance(method, (staticmethod, classmethod)):
                method = method.__func__
            if isinstance(method, types.FunctionType):
                self.follow(method.__code__, method.__globals__)

    def follow(self, code, namespace):
        for name in sorted(_global_names(code)):
            if name in namespace and not name.startswith("__"):
                self.add_object(name, namespace[name])


def describe(func, depfuncs=(), modules=(), user_globals=None):
    """Returns (FunctionSpec, first_arg) for `func`; first_arg is the instance of a bound method
    (to go first in the arguments), or None. With `user_globals` (pp's globals=), global names
    are looked up there instead, and the plain values the function uses travel too."""
    first_arg = None
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
    definition = {"modules": list(modules)}

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
        collector = _Collector(user_globals is not None)
        collector.seen.add(id(entry_owner))
        main_source = _source_keeping_module(entry_owner)
        collector.follow_class(entry_owner)
        definition["function"] = "%s.%s" % (entry_owner.__name__, func_obj.__name__)
    elif _is_installed(func_obj.__module__) and "<locals>" not in func_obj.__qualname__ \
            and func_obj.__name__ != "<lambda>":
        definition["function"] = "%s:%s" % (func_obj.__module__, func_obj.__qualname__)
        return FunctionSpec(key, definition), first_arg
    else:
        collector = _Collector(user_globals is not None)
        collector.seen.add(id(func_obj))
        if func_obj.__name__ == "<lambda>":
            main_source = _lambda_source(func_obj)
            definition["function"] = "_ppgate_lambda"
        else:
            main_source = _dedented_source(func_obj)
            if main_source.lstrip().startswith("@"):
                main_source = _strip_decorators(main_source)
            elif "." not in func_obj.__qualname__ and "<locals>" not in func_obj.__qualname__:
                main_source = _source_keeping_module(func_obj)
            definition["function"] = func_obj.__name__
        collector.follow(func_obj.__code__, func_obj.__globals__ if user_globals is None else user_globals)

    for dep in depfuncs:
        if isinstance(dep, types.ModuleType):
            collector.add_object(dep.__name__, dep)
        elif isinstance(dep, (types.FunctionType, type)):
            if id(dep) not in collector.seen:
                collector.seen.add(id(dep))
                collector.sources.append(_source_keeping_module(dep))
        else:
            raise TypeError("depfuncs must hold functions or classes, not %r" % (dep,))

    closure_names = ()
    cells = None
    if func_obj.__closure__:
        closure_names = func_obj.__code__.co_freevars
        cells = func_obj.__closure__
    definition["modules"] = list(modules) + [i for i in collector.imports if i not in modules]
    # Dependencies first: a class defined in the main source may derive from one of them.
    definition["source"] = "\n".join(collector.sources + [main_source])
    return FunctionSpec(key, definition, closure_names, cells, tuple(collector.values)), first_arg


def closure_values(function, user_globals):
    """The names to set in the job's namespace: the closure's captured values, then `globals=`.
    Raises ValueError naming a captured variable that cannot be pickled."""
    values = {}
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
    for name in function.value_names:
        if user_globals is not None and name in user_globals:
            values[name] = user_globals[name]
    return values
