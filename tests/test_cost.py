import torch
from torch import nn

from geolib.evaluation.cost import count_gflops, count_params, model_cost


def test_flops_are_counted_not_estimated():
    lin = nn.Linear(100, 50)
    assert count_params(lin) == 100 * 50 + 50
    assert abs(count_gflops(lin, torch.randn(4, 100)) - 2 * 4 * 100 * 50 / 1e9) < 1e-12
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert abs(count_gflops(conv, torch.randn(1, 3, 10, 10)) - 2 * 8 * 3 * 9 * 100 / 1e9) < 1e-12


def test_model_cost_fields():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cost = model_cost(net, 32, runs=2)
    assert set(cost) == {"params", "gflops", "ms_per_image", "images_per_s", "peak_mb"}
    assert cost["params"] == 3 * 4 * 9 + 4 and cost["gflops"] > 0 and cost["ms_per_image"] > 0


def test_peak_memory_sees_an_allocation():
    # A fresh process: in this one, memory freed by earlier tests may be reused without RSS growing.
    import subprocess
    import sys

    code = ("import torch\nfrom geolib.evaluation.cost import PeakMemory\nwith PeakMemory() as mem:\n"
            "    block = torch.ones(64 * 2**20 // 4)\n    block += 1\n    del block\nprint(mem.peak_mb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) > 30


def test_flops_of_a_module_fed_a_parameter():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Parameter(torch.randn(1, 1, 8))
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(self.q.expand(len(x), -1, -1), x, x, need_weights=False)[0]

    assert count_gflops(Pool(), torch.randn(2, 5, 8)) > 0
