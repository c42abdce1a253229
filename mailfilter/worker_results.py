"""What a worker may send back to the service, and how the service reads it without trusting it.

Workers parse hostile input with large C libraries; one exploited decoder runs the
attacker's code in that worker. The sandbox keeps it from files and the network, but its
replies still reach the service, and `pickle.loads` of what it wrote would run its code
there: a pickle may name any importable callable and call it (`os.system`). So the two sides
do not speak plain pickle:

- the worker writes replies with `dumps`: protocol 5, and an object may only be one of the
  allowed result types below (else `pickle.PicklingError`, in the worker: an honest worker
  never sends what the service refuses). Dataclasses travel as a call of their class with
  their field values, exceptions as a call of `_exception` with class, args and attributes:
  nothing is rebuilt by setting state on an object (pickle's BUILD), so the service never
  has to allow that;
- the service reads them with `loads`: pickle's pure-Python unpickler with a reduced
  instruction set. Only plain data (None, bools, numbers, str, bytes, bytearray, tuple,
  list, dict, set, frozenset), the memo, and calls of the allowed classes and functions
  (`find_class` refuses every other name); no BUILD, no NEWOBJ, no persistent ids, no
  extension registry, no out-of-band buffers. A call may only call what `find_class`
  returned. The C unpickler is not used because its instructions cannot be restricted and
  its memo grows to whatever index a pickle names (a few bytes can make it allocate
  gigabytes); the pure-Python one costs ~6 µs more for the smallest reply and ~25 µs
  more for an image's fingerprint, 2-3x pickle.loads (bench/worker_overhead.py).

Anything else is `pickle.UnpicklingError` (`ResultRefused`), which the pool treats as a
worker that is not running our code: its task fails (`worker-result-refused`) and the
worker is killed and replaced.

The allow-list is written out (`RESULT_TYPES`) rather than computed from the tasks' return
types at run time, because computing it would import every task's module into the service
(video.py imports PyAV, which the service never loads); `tests/test_worker_results.py`
walks the declared return types of every task the service submits (dataclass fields
included) and fails when this list and that walk differ.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import importlib
import io
import operator
import pickle
import struct
import types
from collections.abc import Callable
from typing import Any, ClassVar, Final

from mailfilter import errors

__all__ = ["PROTOCOL", "RESULT_TYPES", "ResultRefused", "dumps", "loads"]

#: The protocol of every reply. Fixed (not HIGHEST_PROTOCOL): the service accepts only the
#: instructions this protocol writes for the allowed types.
PROTOCOL: Final = 5

#: The result types of the tasks the service runs in the pool (module, qualified name):
#: `extract.extract` -> Extraction; `scanner.extract_and_fingerprint` -> a tuple of
#: Extraction, ImageFingerprint | None, ints, float; `fingerprint.fingerprint_media` and
#: `fingerprint_image` -> ImageFingerprint; `fingerprint.fingerprint_file` ->
#: MediaFingerprint (with video.VideoFingerprint). Plus what those hold. No numpy: no result
#: carries an array (the pixels stay in the worker).
RESULT_TYPES: Final = frozenset({
    ("mailfilter.model", "Attachment"),
    ("mailfilter.model", "AttachmentKind"),
    ("mailfilter.model", "ExactHashes"),
    ("mailfilter.model", "Extraction"),
    ("mailfilter.model", "FileEntry"),
    ("mailfilter.model", "FrameFingerprint"),
    ("mailfilter.model", "ImageFingerprint"),
    ("mailfilter.model", "Unscannable"),
    ("mailfilter.fingerprint", "MediaFingerprint"),
    ("mailfilter.video", "SampledFrame"),
    ("mailfilter.video", "VideoFingerprint"),
    ("mailfilter.hashing.vpdq", "VpdqFeature"),
})


def _exception_types() -> frozenset[tuple[str, str]]:
    """Exceptions that come back as themselves (others as the pool's RemoteError, by name
    and text): Python's own, mailfilter's (`errors.py`, SkipImage above all) and the pool's
    RemoteError (named, not imported: workers.py imports this module)."""
    found = {("builtins", v.__qualname__) for v in vars(builtins).values()
             if isinstance(v, type) and issubclass(v, Exception)}
    found |= {(errors.__name__, v.__qualname__) for v in vars(errors).values()
              if isinstance(v, type) and issubclass(v, Exception)
              and v.__module__ == errors.__name__}
    found.add(("mailfilter.workers", "RemoteError"))
    return frozenset(found)


EXCEPTION_TYPES: Final = _exception_types()


class ResultRefused(pickle.UnpicklingError):
    """A reply that is not what an honest worker writes."""


def _exception(cls: type[Exception], args: tuple[Any, ...],
               attributes: dict[str, Any] | None) -> Exception:
    """An exception rebuilt from its class, args and attributes (the service side of
    `_ResultPickler._reduce_exception`): the call pickle would make, and the attributes
    BaseException.__setstate__ would set, but never a dunder one."""
    if not (isinstance(cls, type) and issubclass(cls, Exception)
            and (cls.__module__, cls.__qualname__) in EXCEPTION_TYPES):
        raise ResultRefused("not an allowed exception class")
    if type(args) is not tuple or not (attributes is None or type(attributes) is dict):
        raise ResultRefused("malformed exception")
    exc = cls(*args)
    for key, value in (attributes or {}).items():
        if type(key) is not str or key.startswith("__"):
            raise ResultRefused("malformed exception attributes")
        setattr(exc, key, value)
    return exc


_FUNCTIONS: Final = frozenset({(__name__, _exception.__qualname__)})
_ALLOWED: Final = RESULT_TYPES | EXCEPTION_TYPES | _FUNCTIONS


# --- the worker side -------------------------------------------------------------------


def _dataclass_reducer(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only for f in fields) or hasattr(cls, "__post_init__"):
        raise pickle.PicklingError(f"{cls.__qualname__} cannot be sent as a call of its class")
    names = [f.name for f in fields]
    if len(names) == 1:
        get = operator.attrgetter(names[0])
        return lambda obj: (cls, (get(obj),))
    get_all = operator.attrgetter(*names)
    return lambda obj: (cls, get_all(obj))


class _ResultPickler(pickle.Pickler):
    """pickle.Pickler (the C one) that refuses every type the service does not accept and
    writes dataclasses and exceptions as calls (see the module docstring). `reducer_override`
    sees every object but plain data (None, bool, int, float, str, bytes, bytearray, tuple,
    list, dict, set, frozenset), and every class or function before it is written by name."""

    _reducers: ClassVar[dict[type, Callable[[Any], Any]]] = {}  # (the answer never changes)

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        reducer = self._reducers.get(cls)
        if reducer is None:
            reducer = self._reducers[cls] = _reducer_for(cls)
        return reducer(obj)


def _refuse_name(obj: Any) -> Any:
    name = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
    if name not in _ALLOWED:
        raise pickle.PicklingError(f"{name[0]}.{name[1]} is not a result type the service "
                                   "accepts (mailfilter/worker_results.py)")
    return NotImplemented


def _reduce_exception(exc: BaseException) -> Any:
    reduced = exc.__reduce_ex__(PROTOCOL)
    if not (isinstance(reduced, tuple) and 2 <= len(reduced) <= 3
            and reduced[0] is type(exc) and type(reduced[1]) is tuple):
        raise pickle.PicklingError(f"{type(exc).__qualname__} reduces in its own way")
    attributes = reduced[2] if len(reduced) == 3 else None
    # What the service's _exception would refuse is not sent (it comes back by name): an
    # honest worker never has its reply refused.
    if attributes is not None and (type(attributes) is not dict or any(
            type(k) is not str or k.startswith("__") for k in attributes)):
        raise pickle.PicklingError(f"{type(exc).__qualname__} has state of its own")
    try:
        type(exc)(*reduced[1])
    except Exception as exc_rebuilding:
        raise pickle.PicklingError(f"{type(exc).__qualname__} cannot be rebuilt from its "
                                   "args") from exc_rebuilding
    return _exception, (type(exc), reduced[1], attributes or None)


def _reducer_for(cls: type) -> Callable[[Any], Any]:
    if issubclass(cls, type) or cls in (types.FunctionType, types.BuiltinFunctionType):
        return _refuse_name  # a class or function: written by name, if allowed
    name = (cls.__module__, cls.__qualname__)
    if name in RESULT_TYPES and issubclass(cls, enum.Enum):
        return lambda obj: NotImplemented  # pickle's own: a call of the class with the value
    if name in RESULT_TYPES and dataclasses.is_dataclass(cls):
        return _dataclass_reducer(cls)
    if name in EXCEPTION_TYPES:
        return _reduce_exception

    def refuse(obj: Any) -> Any:
        raise pickle.PicklingError(f"{name[0]}.{name[1]} is not a result type the service "
                                   "accepts (mailfilter/worker_results.py)")

    return refuse


def dumps(obj: Any) -> bytes:
    """A reply, as the service will accept it; pickle.PicklingError for anything it would
    not (and whatever pickling raises otherwise)."""
    out = io.BytesIO()
    _ResultPickler(out, PROTOCOL).dump(obj)
    return out.getvalue()


# --- the service side ------------------------------------------------------------------

# The instructions protocol 5 writes for the allowed types. Left out: GLOBAL, INST, OBJ
# (names and calls in older protocols), NEWOBJ, NEWOBJ_EX and BUILD (objects made without
# their constructor and state set on any object on the stack: a class, an enum member),
# PERSID/BINPERSID, EXT1/2/4, NEXT_BUFFER/READONLY_BUFFER, and the text forms of protocol 0.
_OPCODES: Final = (
    pickle.PROTO, pickle.FRAME, pickle.STOP, pickle.MARK, pickle.POP, pickle.POP_MARK,
    pickle.DUP, pickle.MEMOIZE, pickle.BINPUT, pickle.LONG_BINPUT, pickle.BINGET,
    pickle.LONG_BINGET, pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.BININT,
    pickle.BININT1, pickle.BININT2, pickle.LONG1, pickle.LONG4, pickle.BINFLOAT,
    pickle.SHORT_BINUNICODE, pickle.BINUNICODE, pickle.BINUNICODE8, pickle.SHORT_BINBYTES,
    pickle.BINBYTES, pickle.BINBYTES8, pickle.BYTEARRAY8, pickle.EMPTY_TUPLE, pickle.TUPLE,
    pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.EMPTY_LIST, pickle.APPEND,
    pickle.APPENDS, pickle.EMPTY_DICT, pickle.SETITEM, pickle.SETITEMS, pickle.EMPTY_SET,
    pickle.ADDITEMS, pickle.FROZENSET, pickle.STACK_GLOBAL, pickle.REDUCE,
)

#: At most this many instructions per reply: every instruction can add a reference (8 bytes
#: and more) to the stack or memo, so this bounds the memory a reply can make the service
#: use beyond its own size. The largest real results (an extraction at its part and member
#: limits, ten minutes of video) take ~100,000.
MAX_INSTRUCTIONS: Final = 4_000_000


# How pickle's pure-Python unpickler ends a load: private, but unchanged since Python 3.0
# (tests/test_worker_results.py reads every kind of reply through this unpickler).
_Stop: Any = pickle._Stop  # type: ignore[attr-defined]


class _ResultUnpickler(pickle._Unpickler):
    """The service's unpickler: see the module docstring."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {}  # filled in below

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        super().__init__(self._data)
        self._found: set[int] = set()  # ids of what find_class returned (the only callables)

    def load(self) -> Any:
        # pickle._Unpickler.load, but with a bounded loop (MAX_INSTRUCTIONS), and reading
        # straight from the reply: it is all in memory, so frames (a hint for reading from a
        # stream in pieces) change nothing, and BytesIO.read is C where pickle's
        # _Unframer.read is Python (a third less time per reply)
        self.read = self._data.read
        self.readline = self._data.readline
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        try:
            for _ in range(MAX_INSTRUCTIONS):
                key = read(1)
                if not key:
                    raise ResultRefused("the reply ends before its end")
                try:
                    load = dispatch[key[0]]
                except KeyError:
                    raise ResultRefused(f"instruction {key!r} is not allowed") from None
                load(self)
        except _Stop as stop:
            return stop.value
        raise ResultRefused(f"more than {MAX_INSTRUCTIONS} instructions")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise ResultRefused(f"{module[:60]!r}.{name[:60]!r} is not an allowed result type")
        found = getattr(importlib.import_module(module), name)
        self._found.add(id(found))  # (module-level: alive as long as the module)
        return found

    def pop_mark(self) -> list[Any]:  # (as pickle's; typeshed leaves it out)
        items = self.stack
        self.stack = self.metastack.pop()
        self.append = self.stack.append
        return items

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self._found or type(args) is not tuple:
            raise ResultRefused("a call of something that is not an allowed result type")
        self.stack[-1] = func(*args)

    # The pure-Python unpickler calls extend/append/add/__setitem__ on whatever is on the
    # stack (an allowed class has methods); here only on the containers these make.
    def load_append(self) -> None:
        value = self.stack.pop()
        _exactly(self.stack[-1], list).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        _exactly(self.stack[-1], list).extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        _exactly(self.stack[-1], dict)[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = _exactly(self.stack[-1], dict)
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        _exactly(self.stack[-1], set).update(items)

    def load_frame(self) -> None:
        self.read(8)  # (its size: see load)

    def load_bytearray8(self) -> None:
        # (pickle's allocates the length the reply names before reading it)
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise ResultRefused("the reply ends inside a bytearray")
        self.append(bytearray(data))


def _exactly(obj: Any, cls: type) -> Any:
    if type(obj) is not cls:
        raise ResultRefused(f"{cls.__name__} instruction on something else")
    return obj


_ResultUnpickler.dispatch = {
    op[0]: getattr(_ResultUnpickler, pickle._Unpickler.dispatch[op[0]].__name__)
    for op in _OPCODES
}


def loads(data: bytes) -> Any:
    """A reply read without trusting it: ResultRefused (pickle.UnpicklingError) for anything
    an honest worker does not write (names off the list, refused instructions, malformed
    data, a failing constructor)."""
    try:
        return _ResultUnpickler(data).load()
    except ResultRefused:
        raise
    except Exception as exc:
        # The class name only: the message may quote the reply.
        raise ResultRefused(f"malformed ({type(exc).__name__})") from exc

