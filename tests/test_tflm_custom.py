"""The parts of the real-TFLM custom-op build that need no TFLM tree (backends/tflm/custom.py).

tests/test_tflm_real.py runs the build itself when TINYPLAN_TFLM_ROOT names a tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import MODELS

from backends.tflite import io
from backends.tflm import custom as tc
from planner.cli import main
from planner.device import load_profile
from planner.errors import PlannerError


def fake_tree(root: Path, with_python: bool = True) -> Path:
    (root / "tensorflow/lite/micro").mkdir(parents=True)
    (root / "tensorflow/lite/micro/micro_common.h").write_text("")
    if with_python:
        (root / "python/tflite_micro").mkdir(parents=True)
        (root / "python/tflite_micro/python_ops_resolver.h").write_text("")
    return root


def fake_third_party(base: Path) -> str:
    """Headers laid out as TFLM's Makefile downloads them (flatbuffers/include, gemmlowp, ruy)."""
    for header, folder in tc.THIRD_PARTY.items():
        dest = base / folder / header
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("")
    return ":".join(str(base / folder) for folder in tc.THIRD_PARTY.values())


def test_no_tree_named_means_no_build(monkeypatch):
    monkeypatch.delenv(tc.ENV_ROOT, raising=False)
    assert tc.tflm_root() is None and tc.toolchain() is None
    with pytest.raises(PlannerError, match=tc.ENV_ROOT):
        tc.build()


def test_a_directory_that_is_not_tflm_is_refused(tmp_path):
    with pytest.raises(PlannerError, match="not a TFLM source tree"):
        tc.tflm_root(tmp_path)
    with pytest.raises(PlannerError, match="python_ops_resolver.h"):
        tc.tflm_root(fake_tree(tmp_path / "t", with_python=False))


def test_missing_third_party_headers_name_the_variable(tmp_path):
    root = fake_tree(tmp_path / "tflm")
    with pytest.raises(PlannerError, match=f"flatbuffers/flatbuffers.h.*{tc.ENV_INCLUDES}"):
        tc.include_dirs(root, "")
    dirs = tc.include_dirs(root, fake_third_party(tmp_path / "tp"))
    assert len(dirs) == 3


def test_tflm_downloads_folder_is_searched(tmp_path):
    root = fake_tree(tmp_path / "tflm")
    fake_third_party(root / "tensorflow/lite/micro/tools/make/downloads")
    assert len(tc.include_dirs(root, "")) == 3


def test_build_command_lines(tmp_path):
    root = fake_tree(tmp_path / "tflm")
    inc = tuple(Path(p) for p in fake_third_party(tmp_path / "tp").split(":"))
    so = tmp_path / "site/tflite_micro/python/tflite_micro/_runtime.so"
    cmds, lib = tc.compile_commands(tc.Toolchain(root, inc, so), tmp_path / "out")
    compiled = [c[c.index("-c") + 1] for c in cmds if "-c" in c]
    names = {Path(s).name for s in compiled}
    assert {"tflm_ops.cc", "tflm_python_registerer.cc", "tp_runtime.c", "tp_kernels.c",
            "tp_storage_flash.c", "tp_storage_file.c", "tp_compress.c", "tp_storage_remote.c",
            "tp_stream_tcp.c"} <= names
    for cmd in cmds[:-1]:
        assert {"-Wall", "-Wextra", "-Werror", "-fPIC"} <= set(cmd)
    for cmd in (c for c in cmds if "-c" in c and c[c.index("-c") + 1].endswith(".cc")):
        # Without TF_LITE_STATIC_MEMORY the tensor structs do not match the wheel's.
        assert "-DTF_LITE_STATIC_MEMORY" in cmd and "-DUSE_TFLM_COMPRESSION" in cmd
        assert cmd[cmd.index(str(root)) - 1] == "-isystem"
    link = cmds[-1]
    assert "-shared" in link and f"-l:{so.name}" in link and "-Wl,--no-undefined" in link
    assert f"-Wl,-rpath,{so.parent}" in link and link[link.index("-o") + 1] == str(lib)


def test_registerer_adds_every_custom_op_the_rewrite_emits():
    """The registerer's table (parsed from its source) covers tflite_io.CUSTOM_OPS."""
    text = (tc.C_DIR / "tflm_python_registerer.cc").read_text()
    table = text[text.index("const Op kOps[]"):]
    names = re.findall(r'\{"(\w+)", tinyplan::Register_\w+\}', table[:table.index("};")])
    assert sorted(names) == sorted(io.CUSTOM_OPS)


def _spill_model(tmp_path):
    from test_tflite_rewrite import hand_plan

    from backends.tflite.rewrite import write_rewritten_tflite
    from frontends import load_model

    path = MODELS / "mlperf_tiny/pretrainedResnet_quant.tflite"
    if not path.exists():
        pytest.skip("../shared models absent")
    graph = load_model(path)
    plan = hand_plan(graph, spills=[(22, 2, 4, "fetch")])  # as in test_tflite_rewrite
    [out] = write_rewritten_tflite(graph, plan, path, tmp_path,
                                   profile=load_profile("qspi-flash"))
    return io.read_model(out.read_bytes()), plan, path, out


def test_storage_specs_cover_every_spill(tmp_path):
    model, plan, _, _ = _spill_model(tmp_path)
    end = max(tr.address + tr.nbytes for tr in plan.transfers)
    [ram] = tc.storage_specs(model, "ram")
    assert (ram.kind, ram.capacity, ram.erase_block, ram.granule) == ("ram", end, 1, 1)
    [flash] = tc.storage_specs(model, "flash", load_profile("qspi-flash"))
    assert (flash.erase_block, flash.granule) == (4096, 256)  # qspi: 4 KiB sectors, 256 B pages
    assert flash.capacity % 4096 == 0 and flash.capacity >= end
    [squeezed] = tc.storage_specs(model, "file", compress=True, workdir=tmp_path)
    assert squeezed.compress and squeezed.path.startswith(str(tmp_path))


def test_verify_refuses_custom_ops_without_a_tree(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(tc.ENV_ROOT, raising=False)
    _, _, path, out = _spill_model(tmp_path)
    capsys.readouterr()
    assert main(["verify-tflm", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Fetch, Spill" in err[0] and tc.ENV_ROOT in err[0]


def test_verify_refuses_a_tree_that_is_not_tflm(tmp_path, capsys):
    _, _, path, out = _spill_model(tmp_path)
    capsys.readouterr()
    assert main(["verify-tflm", str(path), str(out), "--tflm-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a TFLM source tree" in err[0]


def test_rewrite_leaves_no_untouched_tensor_with_bytes(tmp_path):
    """Real TFLM allocates every non-constant tensor, even one no op touches (lifetime
    [-1, -1], all stacked together): fused-away concat outputs must have no bytes."""
    from backends.tflite.rewrite import _tensor_bytes, file_lifetimes

    model = Path(__file__).resolve().parents[1] / "benchmarks/models/tiny_unet_int8.tflite"
    assert main(["solve", str(model), "--profile", "qspi-flash", "--budget", "256KB",
                 "--time-limit", "20", "-o", str(tmp_path), "--emit", "tflite"]) == 0
    rewritten = io.read_model((tmp_path / "tiny_unet_int8.planned.tflite").read_bytes())
    names = {c.customCode for c in rewritten.operatorCodes}
    assert b"FusedConcatConv2D" in names or "FusedConcatConv2D" in names
    life, consts = file_lifetimes(rewritten)
    fb = io.schema()
    untouched = [i for i, t in enumerate(rewritten.subgraphs[0].tensors)
                 if i not in life and i not in consts and _tensor_bytes(fb, t)]
    assert untouched == []
