"""Sampling cost (benchmark/speed.py): the one measurement behind the throughput columns of
the leaderboard and of `python -m benchmark bench` (tests/test_bench.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmark import speed
from benchmark.build import build_method
from benchmark.config import load_config, section
from methods.registry import METHODS, TOKENIZERS, lookup, names


def build(method: str, overrides=()):
    cfg = load_config("smoke", list(overrides))
    tok = lookup(TOKENIZERS, cfg[method].tokenizer)(section(cfg, cfg[method].tokenizer)).eval()
    torch.manual_seed(0)
    return cfg, tok, build_method(cfg, method, tok).eval()


@pytest.mark.parametrize("method", names(METHODS))
def test_cost_fields_present_and_positive_for_every_method(method):
    cfg, tok, model = build(method)
    metrics, protocol = speed.sampling_cost(model, tok, cfg.data.num_classes, 4, torch.device("cpu"), repeats=2)
    for key in ("throughput_img_s", "latency_ms_per_image", "throughput_bs1_img_s", "latency_bs1_ms",
                "peak_memory_mb", "nfe", "params_m", "gflops_per_image", "gflops_decode_per_image"):
        assert metrics[key] > 0, key
    assert metrics["gflops_per_image"] > metrics["gflops_decode_per_image"]
    assert isinstance(metrics["nfe"], int)
    assert protocol["dtype"] == "fp32" and protocol["batch_sizes"] == [1, 4] and protocol["statistic"] == "median"


def test_nfe_counts_steps_and_guidance():
    _, _, flowar = build("flowar")          # smoke: scales 1, 2, 4; 4 flow steps; cfg 1.5
    assert flowar.nfe() == 3 * 4 * 2
    assert flowar.nfe(cfg=1.0) == 3 * 4 and flowar.nfe(num_flow_steps=8) == 3 * 8 * 2
    _, _, var = build("var")                 # scales 1, 2, 4; the batch is always [cond; uncond]
    assert var.nfe() == 2 * 3
    _, _, flexvar = build("flexvar")
    assert flexvar.nfe() == 2 * 3 and flexvar.nfe(infer_patch_nums=[1, 2, 3, 4]) == 2 * 4


def test_flops_follow_the_guided_batch():
    _, tok, flowar = build("flowar")
    guided, decode = speed.flops_per_image(flowar, tok, torch.device("cpu"))
    plain, decode_again = speed.flops_per_image(flowar, tok, torch.device("cpu"), cfg=1.0)
    assert decode == decode_again and plain < guided < 2.2 * plain


def test_cpu_attention_flops_are_counted():
    q = torch.randn(2, 4, 16, 8)
    with FlopCounterMode(display=False, custom_mapping=speed.CPU_SDPA_FLOPS) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 16 * 16 * 8)   # QK^T and PV, 2 FLOPs per multiply-add
