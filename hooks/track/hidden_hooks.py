"""gpulens' hooks on the user's modules, invisible to everything the user's code does with them.

A hook registered on a module lives in the module's ``__dict__`` (a DDP
communication hook in its ``_comm_hooks``), so whatever copies or serialises
the module meets it: ``torch.save(model)``, ``copy.deepcopy(model)`` (every
EMA), ``pickle``, the arguments of ``mp.spawn``.  Ours reach the recorder
(threads, locks, a database), so those calls would fail -- or, if the hook
pickled at all, the user's checkpoint would need gpulens to load.  Hence:

* the class of every hooked module gets a :mod:`copyreg` reducer (pickle,
  ``torch.save``, ``copy.copy`` and ``copy.deepcopy`` all consult it) that
  hands out the state the module would have without our hooks: the bytes
  are those of the unhooked module, and a copy carries no hook of ours;
* ``torch.jit.script`` collects a module's hooks to compile them
  (``torch.jit._recursive.get_hook_stubs``); it is shown the module with
  ours set aside;
* the hook bodies return at once while torch.compile or torch.export traces
  them (:func:`tracing`), so they never enter a graph: no graph break, no
  warning, ``fullgraph=True`` still compiles.

Only gpulens' own hooks are touched (marked with :data:`MARK`); a user's
hooks and reducers are kept, and everything is undone when the last of our
hooks is removed.
"""
from __future__ import annotations

import contextlib
import copyreg
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

#: Attribute set on gpulens' hook functions (bound methods read it through to their function).
MARK = "__gpulens_hook__"
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
#: Keyed by the same handle ids as the hook dicts (flags of hooks registered with kwargs / always_call).
_ID_DICTS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")

_lock = threading.Lock()
_classes: dict[type, tuple[int, Any]] = {}  # hooked class -> (users, the dispatch entry it had before)
_jit_undo: Callable[[], None] | None = None


def gpulens_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn`` (a function, or the function behind a method) as one of gpulens' hooks."""
    setattr(fn, MARK, True)
    return fn


def is_gpulens_hook(obj: Any) -> bool:
    try:
        return getattr(obj, MARK, False) is True
    except Exception:  # a user's hook object with an unusual __getattr__
        return False


def tracing(torch: Any) -> bool:
    """True while torch.compile / torch.export trace the code (the hook must stay out of the graph)."""
    return compiling_check(torch)()


def _never() -> bool:
    return False


def compiling_check(torch: Any) -> Callable[[], bool]:
    """The function :func:`tracing` asks, for hooks that run every step and look it up once
    (``torch.compiler.is_compiling``: dynamo knows the function and reads it as True in a graph)."""
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    return check if callable(check) else _never


def state_without_ours(state: Any) -> Any:
    """``state`` (a module's pickled ``__dict__``) without gpulens' hooks; the same object if it has none."""
    if not isinstance(state, dict):
        return state
    ours: set[Any] = set()
    for name in _HOOK_DICTS:
        hooks = state.get(name)
        if isinstance(hooks, dict):
            ours.update(key for key, hook in hooks.items() if is_gpulens_hook(hook))
    comm = state.get("_comm_hooks")
    comm_ours = isinstance(comm, list) and any(_is_our_comm(entry) for entry in comm)
    comm_list: list[Any] = comm if isinstance(comm, list) else []
    if not ours and not comm_ours:
        return state
    state = dict(state)
    for name in _HOOK_DICTS + _ID_DICTS:
        table = state.get(name)
        if isinstance(table, dict) and any(key in ours for key in table):
            state[name] = OrderedDict((k, v) for k, v in table.items() if k not in ours)
    if comm_ours:
        state["_comm_hooks"] = [entry for entry in comm_list if not _is_our_comm(entry)]
    return state


def _is_our_comm(entry: Any) -> bool:
    return isinstance(entry, tuple) and bool(entry) and is_gpulens_hook(entry[0])


def _reducer(prior: Any) -> Callable[[Any], Any]:
    def reduce(obj: Any) -> Any:
        rv = prior(obj) if prior is not None else obj.__reduce_ex__(4)
        if isinstance(rv, tuple) and len(rv) >= 3:
            state = state_without_ours(rv[2])
            if state is not rv[2]:
                rv = (*rv[:2], state, *rv[3:])
        return rv

    return gpulens_hook(reduce)


def hide_class(cls: type, torch: Any) -> None:
    """Make the instances of ``cls`` copy and pickle without gpulens' hooks (counted; see :func:`unhide_class`)."""
    global _jit_undo
    with _lock:
        users, prior = _classes.get(cls, (0, None))
        if users == 0:
            prior = copyreg.dispatch_table.get(cls)
            copyreg.dispatch_table[cls] = _reducer(prior)
        _classes[cls] = (users + 1, prior)
        if _jit_undo is None:
            _jit_undo = _hide_from_jit(torch)


def unhide_class(cls: type) -> None:
    global _jit_undo
    with _lock:
        users, prior = _classes.get(cls, (0, None))
        if users > 1:
            _classes[cls] = (users - 1, prior)
            return
        _classes.pop(cls, None)
        current = copyreg.dispatch_table.get(cls)
        if is_gpulens_hook(current):  # a reducer the user registered since is theirs to keep
            if prior is None:
                copyreg.dispatch_table.pop(cls, None)
            else:
                copyreg.dispatch_table[cls] = prior
        if not _classes and _jit_undo is not None:
            _jit_undo()
            _jit_undo = None


@contextlib.contextmanager
def set_aside(module: Any) -> Iterator[None]:
    """Take gpulens' forward hooks out of ``module`` for the block, then put everything back in order."""
    saved: list[tuple[dict[Any, Any], list[tuple[Any, Any]]]] = []
    for name in _HOOK_DICTS:
        hooks = module.__dict__.get(name)
        if isinstance(hooks, dict) and any(is_gpulens_hook(h) for h in hooks.values()):
            saved.append((hooks, list(hooks.items())))
            for key in [k for k, h in hooks.items() if is_gpulens_hook(h)]:
                del hooks[key]
    try:
        yield
    finally:
        for hooks, items in saved:
            hooks.clear()
            hooks.update(items)


def _hide_from_jit(torch: Any) -> Callable[[], None] | None:
    try:
        recursive = torch.jit._recursive
        original = recursive.get_hook_stubs
    except Exception:  # a torch without TorchScript: nothing would compile our hooks
        return None

    def get_hook_stubs(nn_module: Any) -> Any:
        with set_aside(nn_module):
            return original(nn_module)

    get_hook_stubs.__wrapped__ = original  # type: ignore[attr-defined]
    recursive.get_hook_stubs = gpulens_hook(get_hook_stubs)

    def undo() -> None:
        if recursive.get_hook_stubs is get_hook_stubs:
            recursive.get_hook_stubs = original

    return undo


class ModuleHooks:
    """The forward hooks one recording put on the user's modules; :meth:`remove` takes them all away."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self._handles: list[Any] = []
        self._classes: list[type] = []

    def forward(self, module: Any, pre: Callable[..., Any], post: Callable[..., Any],
                with_kwargs: bool = False) -> None:
        """Hook ``module``'s forward (``pre``/``post`` must be marked with :func:`gpulens_hook`; with
        ``with_kwargs``, ``pre`` is called with the keyword arguments too)."""
        self.hide(type(module))
        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=with_kwargs))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def hide(self, cls: type) -> None:
        """Instances of ``cls`` carry a hook of ours (forward, or a DDP communication hook)."""
        if cls not in self._classes:
            hide_class(cls, self.torch)
            self._classes.append(cls)

    def remove(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            try:
                handle.remove()
            except Exception:
                pass
        classes, self._classes = self._classes, []
        for cls in classes:
            unhide_class(cls)
