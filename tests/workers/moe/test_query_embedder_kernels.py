"""The query encoder's linear layers in each weight format, fused GELU included, against F.linear (no model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workers.moe.query_embedder import WEIGHT_DTYPES, _bf16_is_native, _linear


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("dtype", WEIGHT_DTYPES, ids=str)
def test_each_weight_format_computes_the_linear_layer_and_its_gelu(dtype: torch.dtype, gelu: bool) -> None:
    if dtype == torch.bfloat16 and not _bf16_is_native():
        pytest.skip("bf16 weights are for CPUs with native bf16")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator) * 0.1  # (out, in)
    bias = torch.randn(96, generator=generator) * 0.1
    x = torch.randn(7, 64, generator=generator)  # (T, in): a short query's tokens
    expected = F.linear(x, weight, bias)
    if gelu:
        expected = F.gelu(expected)  # erf form, BERT's

    linear = _linear(weight, bias, dtype, gelu=gelu)
    compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    result = linear(x.to(compute)).float()

    assert result.shape == expected.shape
    # fp32 exact; bf16 ~3 significant digits; fp16 weights ~3-4; int8 weights and activations ~2.
    tolerance = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-2, torch.qint8: 8e-2}[dtype]
    torch.testing.assert_close(result, expected, atol=tolerance, rtol=0)
    # GELU really applied (or really not): it maps negatives to near zero, a linear layer does not.
    assert bool((result < -0.2).any()) != gelu


def test_int8_weights_give_exact_sums_where_large_activations_meet_large_weights() -> None:
    # Every product is the largest int8 weight times the largest uint8 activation: on CPUs without VNNI fbgemm
    # adds pairs of them in saturating int16 (2·255·127 > 32767) unless activations take 7 bits.
    weight = torch.full((8, 64), 0.5)  # (out, in)
    x = torch.full((3, 64), 2.0)  # (T, in)

    result = _linear(weight, torch.zeros(8), torch.qint8)(x)

    torch.testing.assert_close(result, torch.full((3, 8), 64.0), atol=0.5, rtol=0)
