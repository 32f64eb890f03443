"""C glue: generated tables compile, the runtime replays real plans byte-exactly over every
storage driver (file, flash, remote over loopback TCP), compression on and off, and the
fused concat+conv kernel matches TFLite's reference int8 CONV_2D."""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends.c import kernels as ckernels
from backends.c.glue import build_tables, storage_names, write_c_glue
from backends.storage.host import StorageHostServer
from planner.analysis import lifetimes, line_buffer_bytes, working_set_bound
from planner.checker import assert_valid, check
from planner.device import DeviceProfile, Storage, load_profile
from planner.ir import Graph, Op, OpKind, Role, Tensor, align
from planner.plan import Fusion, Part, Plan, Segment, Transfer

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "c" / "harness.c"
CONV_TEST = ROOT / "tests" / "c" / "conv_test.c"
ZOO = ROOT / "benchmarks" / "models"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is absent")


def build(outdir: Path, main: Path, name: str) -> Path:
    exe = outdir / name
    sources = [str(main)] + sorted(str(p) for p in outdir.glob("*.c"))
    subprocess.run(["gcc", *CFLAGS, "-I", str(outdir), "-o", str(exe), *sources],
                   check=True, capture_output=True, text=True)
    return exe


def run(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def stats(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)}


# -- hand-built graph and plans ---------------------------------------------------------

def concat_conv_graph(h: int = 9, w: int = 7, kernel=(3, 3), strides=(1, 1),
                      padding: str = "same") -> Graph:
    """x -conv-> a -conv-> b -conv-> e -conv-> f; concat(f, b) -conv-> out (NHWC int8)."""
    oh = math.ceil(h / strides[0]) if padding == "same" else (h - kernel[0]) // strides[0] + 1
    ow = math.ceil(w / strides[1]) if padding == "same" else (w - kernel[1]) // strides[1] + 1
    shapes = {"x": (1, h, w, 3), "a": (1, h, w, 5), "b": (1, h, w, 6), "e": (1, h, w, 4),
              "f": (1, h, w, 4), "cat": (1, h, w, 10), "out": (1, oh, ow, 7)}
    ids = {n: i for i, n in enumerate(shapes)}
    roles = {"x": Role.INPUT, "out": Role.OUTPUT}
    tensors = tuple(Tensor(i, n, shapes[n], "int8", math.prod(shapes[n]),
                           roles.get(n, Role.ACTIVATION), i, 3) for n, i in ids.items())
    # The fused conv's constant OHWI int8 filter: the kernel table fuses only real CONV_2Ds.
    filt = (7, kernel[0], kernel[1], 10)
    tensors += (Tensor(len(tensors), "filter", filt, "int8", math.prod(filt), Role.CONSTANT),)
    conv = {"kernel": (1, 1), "strides": (1, 1), "padding": "same"}
    spec = [("x", "a", conv), ("a", "b", conv), ("b", "e", conv), ("e", "f", conv)]
    ops = [Op(k, f"conv{k}", "CONV_2D", OpKind.CONV, (ids[i],), (ids[o],), (), a)
           for k, (i, o, a) in enumerate(spec)]
    ops.append(Op(4, "concat", "CONCATENATION", OpKind.CONCAT, (ids["f"], ids["b"]),
                  (ids["cat"],), (), {"axis": 3}))
    ops.append(Op(5, "fused", "CONV_2D", OpKind.CONV, (ids["cat"], len(tensors) - 1),
                  (ids["out"],), (),
                  {"kernel": kernel, "strides": strides, "padding": padding}))
    return Graph("concat_conv", "tflite", tensors, tuple(ops), (ids["x"],), (ids["out"],))


def first_fit(items: list[dict]) -> int:
    placed: list[dict] = []
    for it in sorted(items, key=lambda i: (-i["size"], i["first"])):
        offset = 0
        for o in sorted((p for p in placed if p["first"] <= it["last"] and
                         it["first"] <= p["last"]), key=lambda p: p["offset"]):
            if offset + it["size"] <= o["offset"]:
                break
            offset = max(offset, o["offset"] + o["size"])
        it["offset"] = offset
        placed.append(it)
    return max(p["offset"] + p["size"] for p in placed)


def concat_conv_plan(g: Graph, split: bool, storage: str = "disk",
                     fuse_conv: bool = True, fetch: bool = False) -> Plan:
    """b spilled after its early read (whole, or its trailing 4 channels) and streamed into
    the fused concat+conv (or into the concat alone), or fetched back before the unfused
    concat (which takes a split tensor's parts as two inputs); f stays resident."""
    b, f, cat = 2, 4, 5
    fuse_conv = fuse_conv and not fetch
    read = 6 if fuse_conv else 5  # the step that reads b back
    conv = 5 if fuse_conv else None
    life = lifetimes(g)
    items = []
    for t, (first, last) in life.items():
        if t == b or (t == cat and fuse_conv):
            continue
        items.append({"tensor": t, "first": first, "last": read if t == f else last,
                      "size": align(g.tensors[t].nbytes)})
    nb = g.tensors[b].nbytes
    parts: tuple[Part, ...] = ()
    if split:
        keep, spilled = nb // 3, nb - nb // 3
        parts = (Part(b, 0, 0, 2, keep), Part(b, 1, 2, 6, spilled))
        items.append({"tensor": b, "first": 2, "last": read, "block": True,
                      "size": align(keep) + align(spilled)})
        part, moved = 1, spilled
    else:
        items.append({"tensor": b, "first": 2, "last": 3, "size": align(nb)})
        part, moved = None, nb
    if fetch:
        items.append({"tensor": b, "part": part, "first": read, "last": read,
                      "size": align(moved)})
    else:
        items.append({"tensor": b, "part": part, "first": read, "last": read,
                      "role": "line_buffer", "size": line_buffer_bytes(g, b, conv, moved)})
    transfers = (Transfer("spill", b, 3, storage, moved, 64, part),
                 Transfer("fetch" if fetch else "stream", b, read, storage, moved, 64, part))
    peak = first_fit(items)
    segments = []
    for it in items:
        if it.get("block"):
            k = align(parts[0].nbytes)
            segments += [Segment(b, 2, read, it["offset"], k, 0),
                         Segment(b, 2, 3, it["offset"] + k, align(parts[1].nbytes), 1)]
        else:
            segments.append(Segment(it["tensor"], it["first"], it["last"], it["offset"],
                                    it["size"], it.get("part"), it.get("role", "tensor")))
    plan = Plan(g.name, "hand", g.num_steps, peak, tuple(segments), parts, transfers,
                () if fetch else (Fusion(4, conv),))
    assert_valid(g, plan, {storage: 1 << 20})
    return plan


def disk_profile(compression: bool = False, erase_block: int = 1, granule: int = 1):
    return DeviceProfile("test", 1 << 20, (Storage("disk", 1 << 16, 1e6, 1e6, 0.0, erase_block,
                                                   granule, compression),))


# -- generation ---------------------------------------------------------------------------

def test_generated_sources_compile_strict(tmp_path: Path):
    g = concat_conv_graph()
    files = write_c_glue(g, concat_conv_plan(g, split=True), None, tmp_path,
                         profile=disk_profile())
    names = {p.name for p in files}
    assert {"tinyplan_plan.h", "tinyplan_plan.c", "tp_runtime.c", "tflm_ops.cc"} <= names
    for c in sorted(tmp_path.glob("*.c")):
        subprocess.run(["gcc", *CFLAGS, "-c", str(c), "-o", str(tmp_path / (c.stem + ".o"))],
                       check=True, capture_output=True, text=True)
    header = (tmp_path / "tinyplan_plan.h").read_text()
    assert "#define TP_STORAGE_DISK 0u" in header
    assert "malloc" not in "".join(p.read_text() for p in tmp_path.glob("tp_*.c"))


def test_tflm_registrations_compile_to_nothing_without_tflm_headers(tmp_path: Path):
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent")
    src = ROOT / "backends" / "c" / "tflm_ops.cc"
    done = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I",
                           str(src.parent), "-c", str(src), "-o", str(tmp_path / "t.o")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    syms = subprocess.run(["nm", str(tmp_path / "t.o")], capture_output=True, text=True).stdout
    assert "Register_SPILL" not in syms  # no TFLM here: the guard leaves it empty


def test_tflm_registrations_compile_against_the_tflm_api_shape(tmp_path: Path):
    """Against declaration-only stubs of the TFLM API it uses (no TFLM headers here)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent")
    src = ROOT / "backends" / "c" / "tflm_ops.cc"
    obj = tmp_path / "t.o"
    done = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I",
                           str(src.parent), "-I", str(ROOT / "tests" / "c" / "tflm_api_stub"),
                           "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    syms = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout
    for name in ("Register_SPILL", "Register_FETCH", "Register_FUSED_CONCAT()",
                 "Register_FUSED_CONCAT_CONV2D", "Register_TRANSPOSE_CONV_ROWS",
                 "Register_SPLIT()", "tp_tflm_set_storages"):
        assert name in syms
    assert "SPLIT_V" not in syms  # no builtin is replaced


def build_tflm_ops_test(out: Path, ops_source: Path | None = None) -> Path:
    """tests/c/tflm_ops_test.cc with tflm_ops.cc (or a mutated copy) and the C runtime."""
    c_dir = ROOT / "backends" / "c"
    objs = []
    for src in sorted(c_dir.glob("tp_*.c")):
        obj = out / (src.stem + ".o")
        subprocess.run(["gcc", *CFLAGS, "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / "tflm_ops_test"
    done = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(c_dir),
                           "-I", str(ROOT / "tests" / "c" / "tflm_api_stub"),
                           str(ROOT / "tests" / "c" / "tflm_ops_test.cc"),
                           str(ops_source or c_dir / "tflm_ops.cc"), *objs, "-o", str(exe)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return exe


@pytest.fixture(scope="module")
def tflm_ops_test(tmp_path_factory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent")
    return build_tflm_ops_test(tmp_path_factory.mktemp("tflm_ops"))


@pytest.mark.parametrize("driver", ["file", "flash", "remote"])
def test_tflm_ops_three_inferences_on_every_driver(tflm_ops_test: Path, driver: str,
                                                   tmp_path: Path):
    """Every custom op (Spill, Fetch, TinyPlanSplit, FusedConcat, FusedConcatConv2D plain /
    grouped / depthwise, TinyPlanTransposeConv, TinyPlanStreamedGroup) through a fake of
    the TFLM API, prepared
    once and invoked three times in a row; each inference's outputs must equal the direct
    computation and the first inference's (tests/c/tflm_ops_test.cc)."""
    if driver == "remote":
        with StorageHostServer(4096, tmp_path) as srv:
            ran = run(tflm_ops_test, "3", f"tcp:{srv.port}")
    else:
        spec = f"file:{tmp_path / 's.bin'}" if driver == "file" else "flash:4:128"
        ran = run(tflm_ops_test, "3", spec)
    assert ran.returncode == 0 and ran.stdout.startswith("ok"), ran.stderr
    if driver == "flash":
        # Two spills share erase block 128: per inference block 128 once, block 256 once,
        # and block 1024 for the rows TinyPlanStreamedGroup spills.
        assert stats(ran.stdout)["erases"] == 3 * 3


@pytest.mark.parametrize("mutation", ["no_erase", "erase_shared_block", "no_group_erase"])
def test_tflm_spill_erase_mutations_fail_on_flash(mutation: str, tmp_path: Path):
    """Without the erase (a Spill's, or a streamed group's for the rows it spills) the
    second inference programs over old data; erasing a block an earlier spill of the same
    inference wrote destroys that spill. Each must be caught."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is absent")
    text = (ROOT / "backends" / "c" / "tflm_ops.cc").read_text()
    group_erase = "static_cast<uint32_t>(view[4]), ViewBytes(view));"
    old = {"no_erase": "int rc = EraseForSpill(a.storage, a.address, a.nbytes);",
           "erase_shared_block": "if (ErasedThisInference(storage, block)) continue;",
           "no_group_erase": group_erase}[mutation]
    new = {"no_erase": "int rc = EraseForSpill(a.storage, a.address, 0);",
           "erase_shared_block":
               "if (ErasedThisInference(storage, block) && false) continue;",
           "no_group_erase": "static_cast<uint32_t>(view[4]), 0);"}[mutation]
    assert old in text
    mutated = tmp_path / "tflm_ops.cc"
    mutated.write_text(text.replace(old, new))
    exe = build_tflm_ops_test(tmp_path, mutated)
    first = run(exe, "1", "flash:4:128")
    three = run(exe, "3", "flash:4:128")
    if mutation == "no_erase":
        assert first.returncode == 0  # fresh flash is erased
    assert three.returncode == 1 and "FAIL" in three.stderr


def test_compression_round_trips(tmp_path: Path):
    c_dir = ROOT / "backends" / "c"
    exe = tmp_path / "compress_test"
    subprocess.run(["gcc", *CFLAGS, "-I", str(c_dir), "-o", str(exe),
                    str(ROOT / "tests" / "c" / "compress_test.c"), str(c_dir / "tp_compress.c"),
                    str(c_dir / "tp_storage_flash.c")], check=True)
    done = run(exe)
    assert done.returncode == 0, done.stderr
    s = stats(done.stdout)
    assert s["elided"] > 0 and s["raw"] > 0  # both modes were exercised


def test_tables_follow_the_plan():
    g = concat_conv_graph()
    plan = concat_conv_plan(g, split=True)
    t = build_tables(g, plan, disk_profile(erase_block=256))
    kinds = [(a.kind, a.step) for a in t["actions"]]
    assert kinds == [(0, 3), (3, 3), (2, 6)]  # spill, compaction of part 0, stream
    spill, compact, stream = t["actions"]
    assert spill.gather == (63, 6, 2, 4) and spill.address == 64
    assert spill.erase == (0, 512)  # the blocks this spill is first to touch
    assert compact.gather == (63, 6, 0, 2)
    assert (stream.rows, stream.row_bytes, stream.line_rows) == (9, 28, 3)
    assert t["phase_start"][2 * 3 + 1] == 0 and t["phase_start"][2 * 3 + 2] == 2


def test_storage_ids_agree_with_the_tflite_rewrite():
    rewrite = pytest.importorskip("backends.tflite.rewrite")
    g = concat_conv_graph()
    plan = concat_conv_plan(g, split=False, storage="remote")
    for prof in (None, load_profile("mixed")):
        assert storage_names(plan, prof) == rewrite.storage_names(plan, prof)


def test_invalid_plan_is_refused(tmp_path: Path):
    g = concat_conv_graph()
    plan = concat_conv_plan(g, split=False)
    broken = Plan(plan.model, plan.planner, plan.num_steps, plan.peak_bytes, plan.segments,
                  plan.parts, plan.transfers[:1], plan.fusions)
    with pytest.raises(Exception, match="invalid"):
        write_c_glue(g, broken, None, tmp_path, profile=disk_profile())


# -- the harness over hand-built and real plans -----------------------------------------

@pytest.fixture(scope="module")
def hand_harness(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hand")
    g = concat_conv_graph()
    write_c_glue(g, concat_conv_plan(g, split=True), None, out,
                 profile=disk_profile(erase_block=256, granule=8))
    return build(out, HARNESS, "harness")


def test_hand_plan_replays_on_file_and_flash(hand_harness: Path, tmp_path: Path):
    for args in (("-c0", "2", f"file:{tmp_path / 's.bin'}"), ("-c1", "2", "flash:8")):
        done = run(hand_harness, *args)
        assert done.returncode == 0, done.stderr
        s = stats(done.stdout)
        assert s["spilled"] == 63 * 4 and s["checked"] > 0
    # The file is not grown to the storage's capacity (64 KiB here): only what was written.
    assert (tmp_path / "s.bin").stat().st_size == 64 + 63 * 4


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_stream_into_a_plain_fused_concat(split: bool, tmp_path: Path):
    g = concat_conv_graph()
    plan = concat_conv_plan(g, split=split, fuse_conv=False)
    write_c_glue(g, plan, None, tmp_path, profile=disk_profile(compression=True))
    tables = build_tables(g, plan, None)
    assert [o["fused"] for o in tables["ops"]][4:] == [1, 0]  # streaming concat, plain conv
    done = run(build(tmp_path, HARNESS, "harness"), "2", f"file:{tmp_path / 's.bin'}")
    assert done.returncode == 0, done.stderr
    s = stats(done.stdout)
    assert s["stored"] < s["spilled"] == (252 if split else 378)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_fetch_before_an_unfused_channel_concat(split: bool, tmp_path: Path):
    g = concat_conv_graph()
    profile = disk_profile(erase_block=64, granule=4)
    if split:
        # The builtin concat reads one tensor: a split's two parts need the fused concat.
        from planner.checker import PlanError

        with pytest.raises(PlanError, match="split tensor read whole after its split"):
            write_c_glue(g, concat_conv_plan(g, split=split, fetch=True), None, tmp_path,
                         profile=profile)
        return
    plan = concat_conv_plan(g, split=split, fetch=True)
    write_c_glue(g, plan, None, tmp_path, profile=profile)
    assert [o["fused"] for o in build_tables(g, plan, None)["ops"]][4:] == [4, 0]
    done = run(build(tmp_path, HARNESS, "harness"), "-c1", "3", "flash:4")
    assert done.returncode == 0, done.stderr
    assert stats(done.stdout)["fetched"] == (252 if split else 378)


def test_spill_free_plan_replays(tmp_path: Path):
    from planner.planners.base import Request, registry

    g = concat_conv_graph()
    plan = registry()["tflm-greedy"](Request(g, load_profile("none")))
    write_c_glue(g, plan, None, tmp_path, profile=load_profile("none"))
    assert "#define TP_NUM_STORAGES 0u" in (tmp_path / "tinyplan_plan.h").read_text()
    done = run(build(tmp_path, HARNESS, "harness"), "2")
    assert done.returncode == 0, done.stderr
    assert stats(done.stdout)["spilled"] == 0 and stats(done.stdout)["checked"] > 0


def test_harness_catches_a_wrong_stream_address(tmp_path: Path):
    g = concat_conv_graph()
    plan = concat_conv_plan(g, split=False)
    write_c_glue(g, plan, None, tmp_path, profile=disk_profile())
    exe = build(tmp_path, HARNESS, "good")
    assert run(exe, "-c0", "1", f"file:{tmp_path / 'a.bin'}").returncode == 0
    src = tmp_path / "tinyplan_plan.c"
    # The stream reads 16 bytes past where the spill wrote: the data check must fail.
    text = src.read_text()
    stream_row = next(line for line in text.splitlines() if line.startswith("  {2, 6,"))
    src.write_text(text.replace(stream_row, stream_row.replace(", 64, ", ", 80, ", 1)))
    exe = build(tmp_path, HARNESS, "bad")
    done = run(exe, "-c0", "1", f"file:{tmp_path / 'b.bin'}")
    assert done.returncode == 1 and "FAIL data" in done.stderr


def test_flash_needs_its_erase(tmp_path: Path):
    g = concat_conv_graph()
    write_c_glue(g, concat_conv_plan(g, split=False), None, tmp_path,
                 profile=disk_profile(erase_block=128, granule=4))
    exe = build(tmp_path, HARNESS, "good")
    assert run(exe, "-c0", "3", "flash:4").returncode == 0
    src = tmp_path / "tinyplan_plan.c"
    src.write_text(src.read_text().replace(", 0, 512, ", ", 0, 0, "))  # drop the erase
    exe = build(tmp_path, HARNESS, "no_erase")
    assert run(exe, "-c0", "1", "flash:4").returncode == 0  # fresh flash is erased
    done = run(exe, "-c0", "2", "flash:4")  # the second inference programs over old data
    assert done.returncode == 1 and "FAIL" in done.stderr


def ilp_plan(path: Path, budget: int | None, profile: str) -> tuple[Graph, Plan, DeviceProfile]:
    from frontends import load_model
    from planner.planners.base import Request, registry

    if not path.is_file():
        pytest.skip(f"{path.name} is absent")
    planners = registry()
    if "ilp" not in planners:
        pytest.skip("the ilp planner is absent")
    g = load_model(path, {})
    prof = load_profile(profile)
    plan = planners["ilp"](Request(g, prof, budget=budget or working_set_bound(g).bytes,
                                   time_limit=30))
    errors = check(g, plan, prof.capacities)
    if errors:  # the planner's own bug, reported by its tests; nothing to replay here
        pytest.skip(f"ilp returned an invalid plan: {errors[0]}")
    return g, plan, prof


ILP_CASES = {
    # int8 NHWC at the working-set bound: skips streamed into fused concat+convs (float
    # NCHW ONNX graphs no longer fuse: no emitted kernel computes them)
    "tflite-stream": (ZOO / "tiny_unet_int8.tflite", None, "qspi-flash"),
    # int8 NHWC: a split with its spilled part fetched back
    "tflite-split-fetch": (ZOO / "tiny_unet_int8.tflite", 290_000, "qspi-flash"),
    # int8 NHWC: a whole skip tensor spilled to 16 KiB-block flash and fetched back
    "tflite-fetch": (ZOO / "tiny_unet_int8.tflite", 240_000, "mixed"),
    # two storages at the working-set bound
    "tflite-mixed": (ZOO / "tiny_unet_int8.tflite", None, "mixed"),
}


@pytest.fixture(scope="module", params=sorted(ILP_CASES))
def ilp_harness(request, tmp_path_factory):
    g, plan, prof = ilp_plan(*ILP_CASES[request.param])
    assert plan.transfers, "the budget should force spills"
    out = tmp_path_factory.mktemp(request.param)
    plan.save(out / "plan.json")  # what a failure replayed
    write_c_glue(g, plan, None, out, profile=prof)
    return build(out, HARNESS, "harness"), plan, prof


def test_ilp_plans_replay_on_file_and_flash(ilp_harness, tmp_path: Path):
    exe, plan, prof = ilp_harness
    n = len(storage_names(plan, prof))
    for compress in ("-c0", "-c1"):
        done = run(exe, compress, "2", *[f"file:{tmp_path / f's{i}.bin'}" for i in range(n)])
        assert done.returncode == 0, done.stderr
        s = stats(done.stdout)
        assert s["spilled"] == plan.spilled_bytes
        assert s["fetched"] == sum(t.nbytes for t in plan.transfers if t.kind == "fetch")
        assert (s["stored"] < s["spilled"]) == (compress == "-c1")
    # The flash driver for flash storages (the plan erases only where blocks need it).
    specs = [f"flash:{st.write_granularity}" if st.erase_block > 1 else f"file:{tmp_path / n}"
             for n in storage_names(plan, prof) for st in [prof.storage(n)]]
    done = run(exe, "-c1", "2", *specs)
    assert done.returncode == 0, done.stderr


def test_ilp_plans_replay_over_the_storage_host(ilp_harness, tmp_path: Path):
    exe, plan, prof = ilp_harness
    names = storage_names(plan, prof)
    caps = [prof.storage(n).capacity for n in names]
    servers = [StorageHostServer(c, tmp_path / f"host{i}") for i, c in enumerate(caps)]
    try:
        ports = [s.start() for s in servers]
        for compress in ("-c0", "-c1"):
            done = run(exe, compress, "2", *[f"tcp:{p}" for p in ports])
            assert done.returncode == 0, done.stderr
            assert stats(done.stdout)["retried"] == 0
    finally:
        for s in servers:
            s.stop()


def test_ilp_plans_replay_on_each_storage_own_driver(ilp_harness, tmp_path: Path):
    """Flash-like storages on the flash driver, the others on the storage host, together."""
    exe, plan, prof = ilp_harness
    specs, servers = [], []
    try:
        for name in storage_names(plan, prof):
            st = prof.storage(name)
            if st.erase_block > 1:
                specs.append(f"flash:{st.write_granularity}")
            else:
                servers.append(StorageHostServer(st.capacity, tmp_path / name))
                specs.append(f"tcp:{servers[-1].start()}")
        done = run(exe, "3", *specs)  # compression as each storage's profile says
        assert done.returncode == 0, done.stderr
        compressed = any(prof.storage(t.storage).compression for t in plan.transfers)
        s = stats(done.stdout)
        assert (s["stored"] < s["spilled"]) == compressed
    finally:
        for srv in servers:
            srv.stop()


def test_remote_driver_retries_damaged_frames(hand_harness: Path, tmp_path: Path):
    from test_remote_protocol import FlakyProxy

    with StorageHostServer(1 << 16, tmp_path) as srv:
        # Two damaged requests, a damaged answer, a lost answer (1 s timeout, reconnect).
        proxy = FlakyProxy(srv.port, damage_requests={0, 5}, damage_responses={3},
                           drop_responses={8})
        try:
            done = run(hand_harness, "-c1", "2", f"tcp:{proxy.port}")
        finally:
            proxy.close()
    assert done.returncode == 0, done.stderr
    assert stats(done.stdout)["retried"] == 4


# -- the fused concat+conv kernel against TFLite's reference CONV_2D ----------------------

CONV_CASES = {  # kernel, strides, padding, relu, split
    "3x3-s1-same-relu-split": ((3, 3), (1, 1), "same", True, True),
    "3x3-s2-valid-whole": ((3, 3), (2, 2), "valid", False, False),
    "2x3-s2x1-same-split": ((2, 3), (2, 1), "same", False, True),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_fused_concat_conv_matches_tflite_reference(case: str, tmp_path: Path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tflite_micro")
    kernel, strides, padding, relu, split = CONV_CASES[case]
    g = concat_conv_graph(kernel=kernel, strides=strides, padding=padding)
    write_c_glue(g, concat_conv_plan(g, split=split), None, tmp_path,
                 profile=disk_profile(compression=True))
    exe = build(tmp_path, CONV_TEST, "conv_test")
    rng = np.random.default_rng(len(case))
    f_t, b_t, out_t = g.tensors[4], g.tensors[2], g.tensors[6]
    # Skewed data (many zero points) so the spill really is compressed.
    in_scale, in_zp, out_scale, out_zp = 0.05, -3, 0.2, 5
    f = np.where(rng.random(f_t.shape) < 0.5, in_zp, rng.integers(-128, 128, f_t.shape))
    b = np.where(rng.random(b_t.shape) < 0.5, in_zp, rng.integers(-128, 128, b_t.shape))
    cin, cout = 10, out_t.shape[3]
    filt = rng.integers(-127, 128, (cout, *kernel, cin)).astype(np.int8)
    f_scales = [float(np.float32(s)) for s in rng.uniform(0.002, 0.02, cout)]
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    mult, shift = ckernels.per_channel_multipliers(in_scale, f_scales, out_scale, cout)
    act_min = max(-128, out_zp) if relu else -128
    header = [cin, cout, *kernel, *strides, int(padding == "same"), -in_zp, out_zp, act_min, 127]
    job = tmp_path / "job.bin"
    job.write_bytes(struct.pack(f"<{len(header)}i", *header) + filt.tobytes() +
                    bias.astype("<i4").tobytes() + np.array(mult, "<i4").tobytes() +
                    np.array(shift, "<i4").tobytes() + f.astype(np.int8).tobytes() +
                    b.astype(np.int8).tobytes())
    done = run(exe, str(job), str(tmp_path / "storage.bin"), str(tmp_path / "out.bin"))
    assert done.returncode == 0, done.stderr
    s = stats(done.stdout)
    assert 0 < s["stored"] < s["spilled"]  # the streamed input came back decompressed
    concat = np.concatenate([f, b], axis=3).astype(np.int8)
    raw = (tmp_path / "out.bin").read_bytes()
    got_concat = np.frombuffer(raw[:concat.size], np.int8).reshape(concat.shape)
    np.testing.assert_array_equal(got_concat, concat)  # tp_fused_concat
    got = np.frombuffer(raw[concat.size:], np.int8).reshape(out_t.shape)
    from one_op_models import one_op_model, reference

    model = one_op_model("CONV_2D", (1, *f_t.shape[1:3], cin), filt, bias, (in_scale, in_zp),
                         f_scales, (out_scale, out_zp), out_t.shape, strides, padding,
                         "relu" if relu else "none")
    want = reference(model, concat)
    assert want.shape == got.shape
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 20  # a real signal, not a saturated constant
