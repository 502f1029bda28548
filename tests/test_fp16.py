"""fp16 agrees with fp32 within ``FP16_TOL`` on every model family (on CPU where torch has
fp16 convolutions, and through the CUDA engine where there is a GPU); SimAM's variance,
a mean, stays finite in fp16 where the reference's sum overflows, and the engine's fp32
SimAM stays finite where even the squared deviations overflow fp16."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_torch_engine import (  # noqa: E402
    FAMILIES,
    max_rel_diff,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    random_feeds,
    small_export,
)

from hepascope.engines import open_engine  # noqa: E402
from hepascope.engines.torch import FP16_TOL, TorchEngine  # noqa: E402
from hepascope.train.models.layers import SimAM  # noqa: E402
from hepascope.train.torch_module import prepare_module  # noqa: E402

FP16_MAX = 65504.0
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def _cpu_has_fp16_conv() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3).half(), torch.ones(1, 1, 3, 3).half())
    except RuntimeError:
        return False
    return True


# bf16 is no stand-in: 8 mantissa bits to fp16's 10, and not what the GPU engine runs
cpu_fp16 = pytest.mark.skipif(not _cpu_has_fp16_conv(), reason="this torch has no fp16 "
                              "convolution on CPU; bf16 is not a substitute for the proof")


def _compare(name: str, factory: pytest.TempPathFactory, device: str) -> None:
    """fp16 on ``device`` against fp32 (ONNX Runtime on CPU) on every graph of ``name``."""
    for graph in sorted(small_export(name, factory).glob("*.onnx")):
        ref = open_engine(graph)
        half = TorchEngine(graph, device=device, fp16=True)
        for batch in (1, 2):
            feeds = random_feeds(ref, batch, seed=10 + batch)
            want = {k: v.copy() for k, v in ref.infer(feeds).items()}
            try:
                got = half.infer(feeds)
            except NotImplementedError as e:  # torch's CPU kernels lack fp16 for some ops
                pytest.skip(f"{name}: {e} on {device}; its fp16 proof is the CUDA test")
            diffs = {k: max_rel_diff(got[k], want[k]) for k in want}
            print(f"\n{name} {graph.name} batch {batch} on {device}: max |fp16 - fp32| {diffs}")
            assert max(diffs.values()) <= FP16_TOL
            if half.fp16:  # it did run in fp16 (the fusion head runs fp32, by design)
                assert max(diffs.values()) > 0
        half.close()
        ref.close()


# the three slowest families on the CPU (VGG, Inception, DenseNet-3D, 3-8 s each) are the
# long variant (--slow): the fp16 path they share with the others runs by default on six
CPU_SLOW = ("vgg16_bn", "se_inception_resnet_v2", "dense3d")


@cpu_fp16
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in CPU_SLOW
                                  else n for n in FAMILIES])
def test_fp16_matches_fp32_on_cpu(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _compare(name, tmp_path_factory, "cpu")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", FAMILIES)
def test_fp16_matches_fp32_on_cuda(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _compare(name, tmp_path_factory, "cuda")


@cpu_fp16
def test_simam_mean_stays_finite_in_fp16_where_the_sum_overflows() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 64, 64, generator=gen) * 8  # squared deviations ~64, 4096 per map
    dev2 = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    assert float(dev2.sum(dim=(2, 3)).min()) > FP16_MAX > float(dev2.mean(dim=(2, 3)).max())
    assert not torch.isfinite(dev2.half().sum(dim=(2, 3))).any()  # the reference's sum
    want = SimAM()(x)
    got = SimAM()(x.half()).float()
    assert bool(torch.isfinite(got).all())
    err = float((got - want).abs().max() / want.abs().max())
    print(f"\nSimAM fp16 (mean) vs fp32, sum of squares {float(dev2.sum((2, 3)).max()):.0f}: "
          f"max |diff| / max |out| {err:.1e}")
    assert err <= FP16_TOL


@cpu_fp16
def test_the_engine_keeps_simam_fp32_where_fp16_squares_overflow() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    x[0, 1, 5, 7] = 300.0  # (300 - mean)^2 > 65504: inf in fp16, then inf / inf
    assert not bool(torch.isfinite(SimAM()(x.half())).all())  # the layer alone in fp16
    layer = prepare_module(torch.nn.Sequential(SimAM()), device="cpu", fp16=True,
                           channels_last=False)
    with torch.no_grad():
        got = layer(x.half())
    assert got.dtype == torch.float16 and bool(torch.isfinite(got).all())
    want = SimAM()(x)
    err = float((got.float() - want).abs().max() / want.abs().max())
    print(f"\nSimAM kept fp32 in an fp16 model vs fp32: max |diff| / max |out| {err:.1e}")
    assert err <= FP16_TOL
