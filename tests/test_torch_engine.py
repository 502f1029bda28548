"""The torch engine: the torch.export program the export writes beside each graph agrees
with ONNX Runtime on one model of every registered family; a bimodal export runs the live
classifier through it; exports without (or with the wrong, or a damaged) program are
refused; on CUDA, the CUDA graph replays exactly what eager runs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support.models import (  # noqa: E402
    BIMODAL_SMALL,
    shrink_kwargs,
    small_export_meta,
    small_model,
)

from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.errors import ModelError  # noqa: E402
from hepascope.core.export_format import program_file  # noqa: E402
from hepascope.core.frame import Frame  # noqa: E402
from hepascope.engines import open_engine  # noqa: E402
from hepascope.engines.torch import FP16_TOL, TorchEngine  # noqa: E402
from hepascope.phantom import Phantom, make_case  # noqa: E402
from hepascope.stream.model_loader import open_model  # noqa: E402
from hepascope.train.export import export_checkpoint  # noqa: E402
from hepascope.train.models import example_inputs, model_kind  # noqa: E402

# One registered model per family; the other members differ from it by switches on the
# same code (widths, ablated attention, plain blocks). The two single-branch bimodal
# models are here for their own export path (one graph: image, or clip).
FAMILIES = ["bimodal_resnet18_lite", "bimodal_resnet18_lite_bmode_only",
            "bimodal_resnet18_lite_ceus_only", "resnet50", "vgg16_bn",
            "se_inception_resnet_v2", "c3d", "dense3d", "res3d_18"]
PARITY_TOL = 1e-4  # max |torch - onnxruntime|, as the export's own parity check
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
_EXPORTS: dict[str, Path] = {}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while a test runs (restored after): on shared cores, torch's
    OpenMP barriers wait on descheduled threads and small models run ten times slower.
    test_fp16 and test_engine_select use it too."""
    with torch_threads(1):
        yield


def small_export(name: str, factory: pytest.TempPathFactory) -> Path:
    """Export directory (graphs + programs) of registered model ``name`` at its small size,
    made once per session (test_fp16 and test_engine_select use it too). The last linear
    layer is scaled so the logits' spread over random inputs is 2: probabilities neither
    uniform nor saturated, as a trained model's, so a change in the logits shows."""
    if name in _EXPORTS:
        return _EXPORTS[name]
    with torch_threads(1):
        torch.manual_seed(0)
        model, size = small_model(name)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            spread = model.eval()(*example_inputs(model, 4, size)).std()  # type: ignore[operator]
            last.weight.mul_(2.0 / spread)
            last.bias.mul_(2.0 / spread)
        kwargs = {"num_classes": 3, **(BIMODAL_SMALL if model_kind(name) == "bimodal" else {}),
                  **shrink_kwargs(name)}
        out = factory.mktemp(name)
        export_checkpoint(model, {**small_export_meta(name, size), "kwargs": kwargs}, out)
    _EXPORTS[name] = out
    return out


def random_feeds(engine: object, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.normal(size=(batch, *s.shape[1:])).astype(np.float32)
            for s in engine.inputs}  # type: ignore[attr-defined]


def max_rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to max |want| (1 at least: probabilities stay absolute)."""
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", FAMILIES)
def test_torch_engine_matches_onnxruntime(name: str,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    out = small_export(name, tmp_path_factory)
    names = {p.name for p in out.iterdir()}
    assert {program_file(g).name for g in out.glob("*.onnx")} <= names
    for graph in sorted(out.glob("*.onnx")):
        ort = open_engine(graph)
        eng = open_engine(graph, "torch", device="cpu")
        assert isinstance(eng, TorchEngine) and not eng.fp16 and not eng.cuda_graph
        assert (eng.inputs, eng.outputs, eng.metadata) == (ort.inputs, ort.outputs, ort.metadata)
        for batch in (1, 2):
            feeds = random_feeds(ort, batch, seed=batch)
            want = {k: v.copy() for k, v in ort.infer(feeds).items()}
            got = eng.infer(feeds)
            assert eng.infer(feeds) is got  # buffers allocated once per shape, by name
            diffs = {k: max_rel_diff(got[k], want[k]) for k in want}
            print(f"\n{name} {graph.name} batch {batch}: max |torch - onnxruntime| {diffs}")
            assert max(diffs.values()) <= PARITY_TOL
        eng.close()
        ort.close()
        with pytest.raises(ModelError, match="closed"):
            eng.infer(random_feeds(ort, 1, seed=0))


def test_bimodal_export_runs_the_live_classifier_on_torch(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    out = small_export("bimodal_resnet18_lite", tmp_path_factory)
    ph = Phantom(make_case(3, lesion="hcc"), fps=30.0)
    frames = [Frame(ph.render(i)[0], i, 1_000 + i, "phantom:3", i * 0.7) for i in range(5)]
    clfs = [open_model(out, load_config(), backend=b, verdicts=False)
            for b in ("torch", "onnxruntime")]
    engines = list(clfs[0].engines.values())  # type: ignore[attr-defined]
    assert {e.name for e in engines} == {"torch"}
    # CPU where torch sees no GPU (fp32: export parity), else CUDA (fp16 encoders)
    tol = FP16_TOL if any(e.fp16 for e in engines) else PARITY_TOL
    try:
        for frame in frames:
            (p_torch, stages), (p_ort, _) = (c.predict(frame) for c in clfs)
            assert {"encode", "fuse"} <= set(stages)
            assert float(np.abs(p_torch - p_ort).max()) <= tol
    finally:
        for c in clfs:
            c.close()


def test_exports_without_their_programs_are_refused(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(small_export("c3d", tmp_path_factory), bare)
    for f in bare.glob("*.pt2"):
        f.unlink()
    with pytest.raises(ModelError, match="re-export with hepascope export") as err:
        open_model(bare, load_config(), backend="torch")
    assert "\n" not in str(err.value)
    # the program of another model: refused too, not run in the graph's place
    other = small_export("dense3d", tmp_path_factory)
    shutil.copy(other / "model.pt2", bare / "model.pt2")
    with pytest.raises(ModelError, match="program beside it is dense3d"):
        TorchEngine(bare / "model.onnx", device="cpu")
    (bare / "model.pt2").write_bytes(b"PK\x03\x04 not a program")  # a damaged archive
    with pytest.raises(ModelError, match=r"not a loadable torch\.export program"):
        TorchEngine(bare / "model.onnx", device="cpu")
    with pytest.raises(ModelError, match="not a hepascope export"):  # a plain ONNX classifier
        TorchEngine(small_model, device="cpu")


@cuda
@pytest.mark.gpu
def test_cuda_graph_replays_what_eager_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    graph = small_export("bimodal_resnet18_lite", tmp_path_factory) / "bmode_encoder.onnx"
    replayed = TorchEngine(graph, device="cuda")
    eager = TorchEngine(graph, device="cuda", cuda_graph=False)
    assert replayed.fp16 and replayed.channels_last and replayed.cuda_graph
    assert replayed.replays == 1  # batch 1 captured (and replayed once) when built
    try:
        seen = []
        for i, batch in enumerate((1, 1, 1, 2)):
            feeds = random_feeds(replayed, batch, seed=i)
            got = {k: v.copy() for k, v in replayed.infer(feeds).items()}
            want = eager.infer(feeds)
            for k in want:  # the same fp16 kernels on the same inputs
                np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6)
            seen.append(got["bmode_feat"][0])
        # each call read its own inputs: the static buffers were refilled, not stale
        assert not np.array_equal(seen[0], seen[1])
        assert replayed.replays == 1 + 4 and eager.replays == 0  # batch 2: one more capture
    finally:
        replayed.close()
        eager.close()


def test_the_lean_module_runs_the_same_graph_with_fewer_reads_and_keeps_its_guards(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """``lean_module`` drops the reads of the parameters a part never uses (the CEUS encoder
    of a bimodal export carries the B-mode ones too) and flattens the others: same outputs,
    and the program's shape guard still refuses an input of another size."""
    from hepascope.engines.torch import lean_module

    out = small_export("bimodal_resnet18_lite", tmp_path_factory)
    program = torch.export.load(str(program_file(out / "ceus_encoder.onnx")))
    plain, lean = program.module(), lean_module(program.module())
    reads = [n for n in plain.graph.nodes if n.op == "get_attr"]
    kept = [n for n in lean.graph.nodes if n.op == "get_attr"]
    assert len(kept) < len(reads) and all("." not in n.target for n in kept)
    spec = open_engine(out / "ceus_encoder.onnx").inputs[0]
    x = torch.from_numpy(np.random.default_rng(0).normal(
        size=(2, *spec.shape[1:])).astype(np.float32))
    with torch.inference_mode():
        assert torch.equal(lean(x), plain(x))
        bad = torch.zeros((1, *spec.shape[1:-1], spec.shape[-1] + 8))
        with pytest.raises(AssertionError, match="Guard"):
            lean(bad)
