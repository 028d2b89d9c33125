"""On a CUDA device: every architecture trains a step in bf16 autocast with channels_last, and its fp32
output matches the CPU's. Deselected by default (``-m gpu`` runs them); CI has no GPU."""

import pytest
import torch

from covidnet.models import create_model, list_models
from covidnet.profile import profile_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("arch", list_models())
def test_bf16_channels_last_training_step_on_gpu(arch):
    model = create_model(arch, num_classes=3, in_channels=1).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    x = torch.randn(4, 1, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("arch", list_models())
def test_gpu_fp32_output_matches_cpu(arch):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = create_model(arch, num_classes=3, in_channels=3).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        cpu = model(x).softmax(1)
        gpu = model.cuda()(x.cuda()).softmax(1).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_profile_on_gpu_reports_latency_and_memory():
    p = profile_model("covidnet-cxr3b", 480, runs=5, warmup=2, device="cuda")
    d = p.to_dict()
    assert d["latency_ms_cuda"] > 0 and d["peak_mem_mb"] > p.params * 4 / 2**20
