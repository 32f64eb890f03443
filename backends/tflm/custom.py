"""Build and load the project's TFLM custom ops for the tflite-micro Python wheel.

The rewritten .tflite of a spill plan uses custom ops (`backends/c/tflm_ops.cc`). To run
it on the real interpreter, this module compiles `tflm_ops.cc`, the registerer
`tflm_python_registerer.cc` and the runtime `tp_*.c` against a TFLM source tree the
*user* names (`TINYPLAN_TFLM_ROOT`, or `root=`), with the defines the wheel was built
with (without `TF_LITE_STATIC_MEMORY` TfLiteTensor/TfLiteEvalTensor differ and Prepare
fails), links it against the wheel's own `_runtime.so`, and loads it with RTLD_GLOBAL so
the wheel's `dlsym` finds `TinyPlanRegisterer`. The project ships no TFLM code and
fetches none; the tree must match the installed wheel (docs/tflm_backend.md).

Third-party headers TFLM includes (flatbuffers, gemmlowp, ruy) are taken from
`TINYPLAN_TFLM_INCLUDES` (directories separated by os.pathsep) and from where TFLM's
Makefile downloads them (`tensorflow/lite/micro/tools/make/downloads/`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.kernels import STREAMED_GROUP

ENV_ROOT = "TINYPLAN_TFLM_ROOT"
ENV_INCLUDES = "TINYPLAN_TFLM_INCLUDES"
ENV_CACHE = "TINYPLAN_TFLM_CACHE"
REGISTERER = "TinyPlanRegisterer"
# The wheel's build flags that change struct layouts or compiled-in features.
DEFINES = ("TF_LITE_STATIC_MEMORY", "USE_TFLM_COMPRESSION")
C_DIR = Path(__file__).parents[1] / "c"
CXX_SOURCES = ("tflm_ops.cc", "tflm_python_registerer.cc")
C_EXCLUDE: tuple[str, ...] = ()  # the host build takes every driver, TCP included
WARNINGS = ("-Wall", "-Wextra", "-Werror")
# header -> what to tell the user when no include directory has it
THIRD_PARTY = {
    "flatbuffers/flatbuffers.h": "flatbuffers/include",
    "fixedpoint/fixedpoint.h": "gemmlowp",
    "ruy/profiler/instrumentation.h": "ruy",
}
STORAGE_KINDS = {"ram": 0, "file": 1, "flash": 2, "remote": 3}
STREAMED_GROUP_OP = STREAMED_GROUP.custom_op


@dataclass(frozen=True)
class Toolchain:
    root: Path
    includes: tuple[Path, ...]
    runtime_so: Path
    cc: str = "gcc"
    cxx: str = "g++"


def tflm_root(root: str | os.PathLike | None = None) -> Path | None:
    """The TFLM tree the user named (argument, else $TINYPLAN_TFLM_ROOT), or None."""
    value = root if root is not None else os.environ.get(ENV_ROOT)
    if not value:
        return None
    path = Path(value).expanduser()
    if not (path / "tensorflow" / "lite" / "micro" / "micro_common.h").is_file():
        raise PlannerError(f"{path}: not a TFLM source tree (no tensorflow/lite/micro/"
                           "micro_common.h)")
    if not (path / "python" / "tflite_micro" / "python_ops_resolver.h").is_file():
        raise PlannerError(f"{path}: TFLM tree without python/tflite_micro/"
                           "python_ops_resolver.h (needed to register custom ops)")
    return path


def include_dirs(root: Path, extra: str | None = None) -> tuple[Path, ...]:
    """Directories for the third-party headers; refuses when one of them is missing."""
    text = extra if extra is not None else os.environ.get(ENV_INCLUDES, "")
    dirs = [Path(p).expanduser() for p in text.split(os.pathsep) if p]
    downloads = root / "tensorflow" / "lite" / "micro" / "tools" / "make" / "downloads"
    dirs += [downloads / "flatbuffers" / "include", downloads / "gemmlowp", downloads / "ruy"]
    found = [d for d in dirs if d.is_dir()]
    for header, hint in THIRD_PARTY.items():
        if not any((d / header).is_file() for d in found):
            raise PlannerError(f"TFLM needs {header}: put its {hint} directory in "
                               f"{ENV_INCLUDES} (separated by '{os.pathsep}')")
    return tuple(dict.fromkeys(found))


def wheel_runtime() -> Path:
    """The installed tflite-micro wheel's `_runtime` extension (what the ops link against)."""
    import importlib.util

    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        raise PlannerError("tflite-micro is not installed in this Python")
    base = Path(next(iter(spec.submodule_search_locations))) / "python" / "tflite_micro"
    found = sorted(base.glob("_runtime*.so"))
    if not found:
        raise PlannerError(f"{base}: the tflite-micro wheel has no _runtime*.so")
    return found[0]


def toolchain(root: str | os.PathLike | None = None) -> Toolchain | None:
    """Everything a build needs, or None when the user named no TFLM tree."""
    path = tflm_root(root)
    if path is None:
        return None
    cc, cxx = os.environ.get("CC", "gcc"), os.environ.get("CXX", "g++")
    for tool in (cc, cxx):
        if shutil.which(tool) is None:
            raise PlannerError(f"compiler '{tool}' not found (set CC / CXX)")
    return Toolchain(path, include_dirs(path), wheel_runtime(), cc, cxx)


def c_sources() -> list[Path]:
    return sorted(p for p in C_DIR.glob("tp_*.c") if p.name not in C_EXCLUDE)


def compile_commands(tc: Toolchain, outdir: Path) -> tuple[list[list[str]], Path]:
    """The compiler and linker command lines, and the library they produce."""
    # TFLM's own headers are not -Wextra clean (unused parameters): -isystem keeps the
    # warnings strict for the project's files only.
    system = [arg for d in (tc.root, *tc.includes) for arg in ("-isystem", str(d))]
    defines = [f"-D{d}" for d in DEFINES]
    cmds, objects = [], []
    for src in c_sources():
        obj = outdir / (src.stem + ".o")
        cmds.append([tc.cc, "-std=c99", "-O2", "-fPIC", *WARNINGS, "-c", str(src), "-o",
                     str(obj)])
        objects.append(obj)
    for name in CXX_SOURCES:
        src, obj = C_DIR / name, outdir / (Path(name).stem + ".o")
        cmds.append([tc.cxx, "-std=c++17", "-O2", "-fPIC", *WARNINGS, *defines,
                     f"-I{C_DIR}", *system, "-c", str(src), "-o", str(obj)])
        objects.append(obj)
    lib = outdir / "libtinyplan_tflm.so"
    rt = tc.runtime_so
    # --no-undefined: a TFLM tree that does not match the wheel fails here, not at dlopen.
    cmds.append([tc.cxx, "-shared", "-o", str(lib), *map(str, objects), f"-L{rt.parent}",
                 f"-l:{rt.name}", f"-Wl,-rpath,{rt.parent}", "-Wl,--no-undefined"])
    return cmds, lib


def _cache_dir(tc: Toolchain, cache: str | os.PathLike | None) -> Path:
    h = hashlib.sha256()
    for p in [*c_sources(), *(C_DIR / n for n in CXX_SOURCES), *sorted(C_DIR.glob("*.h"))]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    st = tc.runtime_so.stat()
    h.update(repr((str(tc.root), tuple(map(str, tc.includes)), str(tc.runtime_so),
                   st.st_size, st.st_mtime_ns, tc.cc, tc.cxx, DEFINES)).encode())
    base = Path(cache or os.environ.get(ENV_CACHE) or
                Path.home() / ".cache" / "tinyplan" / "tflm")
    return base / h.hexdigest()[:16]


def build(root: str | os.PathLike | None = None,
          cache: str | os.PathLike | None = None) -> Path:
    """Compile (once per sources/tree/wheel) and return the shared library's path."""
    tc = toolchain(root)
    if tc is None:
        raise PlannerError(f"no TFLM tree named: set {ENV_ROOT} to a tflite-micro checkout "
                           "matching the installed wheel")
    outdir = _cache_dir(tc, cache)
    cmds, lib = compile_commands(tc, outdir)
    if lib.is_file():
        return lib
    outdir.mkdir(parents=True, exist_ok=True)
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines()
                     if ("error" in ln or "undefined reference" in ln)
                     and not ln.startswith("collect2")]
            why = (lines or (done.stderr + done.stdout).splitlines() or ["failed"])[0]
            what = Path(cmd[cmd.index("-c") + 1]).name if "-c" in cmd else "link"
            raise PlannerError(f"building the TFLM custom ops failed ({what}): {why.strip()}")
    return lib


# One build per process: the wheel finds TinyPlanRegisterer with dlsym over the whole
# process, so a second copy (another cache folder, or sources edited meanwhile) would
# bind the ops of one copy to the storages of the other.
_LOADED: dict[str, ctypes.CDLL] = {}


def load(root: str | os.PathLike | None = None,
         cache: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Build if needed and load the ops into the process (RTLD_GLOBAL), once."""
    tc = toolchain(root)
    if tc is None:
        return _load(build(root, cache))  # build() refuses: no tree named
    key = _cache_dir(tc, cache).name  # the digest of sources, tree, wheel and compilers
    if key not in _LOADED and _LOADED:
        raise PlannerError("another build of the TinyPlan TFLM ops is already loaded in this "
                           "process (sources or tree changed): start a new process")
    if key not in _LOADED:
        _LOADED[key] = _load(build(root, cache))
    return _LOADED[key]


def _load(lib: Path) -> ctypes.CDLL:
    # The wheel's extension first, so the library binds to the copy Python uses.
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401

    handle = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    handle.tp_py_add_storage.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                         ctypes.c_uint32, ctypes.c_uint32]
    handle.tp_py_add_storage.restype = ctypes.c_int
    handle.tp_py_apply.argtypes = [ctypes.c_uint32]
    handle.tp_py_apply.restype = ctypes.c_int
    handle.tp_py_flash_erases.argtypes = [ctypes.c_uint32]
    handle.tp_py_flash_erases.restype = ctypes.c_int64
    handle.tp_py_reset.restype = None
    handle.tp_py_registered_ops.restype = ctypes.c_char_p
    handle.tp_py_set_async.argtypes = [ctypes.c_int]
    handle.tp_py_set_async.restype = ctypes.c_int
    handle.tp_py_async_started.restype = ctypes.c_int64
    handle.tp_py_async_on_worker.restype = ctypes.c_int64
    return handle


@dataclass(frozen=True)
class StorageSpec:
    """One host storage: `kind` ram, file, flash (NOR emulated on RAM) or remote (a
    storage host at `path` = "127.0.0.1:PORT")."""

    kind: str
    capacity: int
    erase_block: int = 1
    granule: int = 1
    compress: bool = False
    path: str | None = None


def configure_storages(handle: ctypes.CDLL, specs: Sequence[StorageSpec]) -> None:
    """Fresh storages with ids 0..n-1 for the next interpreter(s); earlier ones are dropped."""
    handle.tp_py_reset()
    mask = 0
    for i, spec in enumerate(specs):
        if spec.kind not in STORAGE_KINDS:
            raise PlannerError(f"unknown storage driver '{spec.kind}': use "
                               f"{', '.join(STORAGE_KINDS)}")
        if spec.kind in ("file", "remote") and not spec.path:
            raise PlannerError(f"a {spec.kind} storage needs a path")
        path = spec.path.encode() if spec.path else None
        rc = handle.tp_py_add_storage(STORAGE_KINDS[spec.kind], path, spec.capacity,
                                      spec.erase_block, spec.granule)
        if rc != i:
            raise PlannerError(f"storage {i} ({spec.kind}, {spec.capacity} B): the C runtime "
                               f"refused it (code {rc})")
        mask |= int(spec.compress) << i
    if handle.tp_py_apply(mask) != 0:
        raise PlannerError("the C runtime refused the storages")


# Asynchronous channels for the storages (backends/c/tp_async.h): none (every transfer a
# blocking call), the blocking driver, a host worker thread per storage that moves data
# as soon as the channel is free, or one that moves it at the end of each window.
ASYNC_MODES = {"off": -1, "blocking": 0, "thread": 1, "thread-latest": 2}


def set_async(handle: ctypes.CDLL, mode: str) -> None:
    """Route the configured storages (configure_storages first) through `mode`'s driver."""
    if mode not in ASYNC_MODES:
        raise PlannerError(f"unknown async mode '{mode}': use {', '.join(ASYNC_MODES)}")
    if handle.tp_py_set_async(ASYNC_MODES[mode]) != 0:
        raise PlannerError(f"the C runtime refused async mode '{mode}'")


def async_counts(handle: ctypes.CDLL) -> tuple[int, int]:
    """(spills and fetches started with a window, transfers run on a worker thread)."""
    return int(handle.tp_py_async_started()), int(handle.tp_py_async_on_worker())


def registered_ops(handle: ctypes.CDLL) -> tuple[str, ...]:
    """The custom ops TinyPlanRegisterer adds (read from the library itself)."""
    return tuple(n for n in handle.tp_py_registered_ops().decode().split(",") if n)


def flash_erases(handle: ctypes.CDLL, storage: int) -> int | None:
    """Flash blocks erased so far on a flash storage (None for other drivers)."""
    n = int(handle.tp_py_flash_erases(storage))
    return None if n < 0 else n


def storage_specs(model, driver: str, profile=None, compress: bool = False,
                  workdir: str | os.PathLike | None = None) -> list[StorageSpec]:
    """Host storages for a rewritten model: one per `TinyPlanStorages` line.

    Capacity covers every Spill's byte range (the options carry address and size); the
    profile's storage of the same name gives the flash geometry and compression flag.
    A flash storage without a profile entry gets 4 KiB erase blocks, 1-byte programming.
    """
    from backends.tflite import io

    raw = io.get_metadata(model, io.STORAGE_METADATA)
    names = raw.decode("utf-8", "replace").splitlines() if raw else []
    ends = [0] * len(names)
    for op, name in _custom_ops(model):
        if name == STREAMED_GROUP_OP and op.customOptions is not None:
            _group_ends(op, names, ends)
            continue
        if name != "Spill" or op.customOptions is None:
            continue
        words = io.unpack_int32(bytes(bytearray(op.customOptions)))
        if len(words) < 4 or not 0 <= words[1] < len(names):
            raise PlannerError(f"Spill with malformed options {words[:4]}")
        ends[words[1]] = max(ends[words[1]], words[2] + words[3])
    by_name = {s.name: s for s in getattr(profile, "storages", ())}
    specs = []
    for i, name in enumerate(names):
        known = by_name.get(name)
        block = max(1, known.erase_block) if known is not None else 4096
        granule = max(1, known.write_granularity) if known is not None else 1
        if driver != "flash":
            block, granule = 1, 1
        capacity = max(ends[i], 1)
        capacity = -(-capacity // block) * block
        path = None  # a remote storage gets its address from start_storage_hosts
        if driver == "file":
            base = Path(workdir) if workdir is not None else Path.cwd()
            path = str(base / f"tinyplan_storage_{i}.bin")
        squeeze = compress or (known is not None and known.compression)
        specs.append(StorageSpec(driver, capacity, block, granule, squeeze, path))
    return specs


def _group_ends(op, names: Sequence[str], ends: list[int]) -> None:
    """Raise `ends` to cover the rows a TinyPlanStreamedGroup spills (its view table)."""
    from backends.tflite import io
    from backends.tflite.rewrite import VIEW_SPILL_ROWS, group_views

    words = io.unpack_int32(bytes(bytearray(op.customOptions)))
    try:
        storage, views = group_views(words)
    except ValueError as exc:
        raise PlannerError(f"{STREAMED_GROUP_OP} with malformed options: {exc}") from None
    for mode, height, row_bytes, _held, address in views:
        if mode != VIEW_SPILL_ROWS:
            continue
        if not 0 <= storage < len(names):
            raise PlannerError(f"{STREAMED_GROUP_OP} spills rows to storage {storage}, which "
                               "the model's TinyPlanStorages does not name")
        ends[storage] = max(ends[storage], address + height * row_bytes)


def _custom_ops(model):
    from backends.tflite import io

    fb = io.schema()
    codes = model.operatorCodes or []
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            code = codes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == fb.BuiltinOperator.CUSTOM:
                raw = code.customCode
                yield op, raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def start_storage_hosts(specs: Sequence[StorageSpec], stack, workdir: str | os.PathLike):
    """A `storage-host` process per remote storage (on loopback, any free port), stopped
    when `stack` (a contextlib.ExitStack) closes; returns the specs with their addresses.

    A process, not a thread: the wheel holds the GIL during Invoke, so a Python server in
    the same process could never answer the Spill/Fetch requests.
    """
    import sys
    from dataclasses import replace

    out = []
    for i, spec in enumerate(specs):
        if spec.kind != "remote":
            out.append(spec)
            continue
        folder = Path(workdir) / f"host{i}"
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "planner", "storage-host", "--tcp", "127.0.0.1:0",
             "--capacity", str(spec.capacity), "--dir", str(folder)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        stack.callback(_stop, proc)
        line = proc.stderr.readline() if proc.stderr is not None else ""
        words = line.split()
        if len(words) < 4 or words[:3] != ["storage", "host", "on"]:
            raise PlannerError(f"the storage host did not start: {line.strip() or 'no output'}")
        out.append(replace(spec, path=words[3].rstrip(",")))
    return out


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
