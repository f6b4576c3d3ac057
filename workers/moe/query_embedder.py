"""The router's query path: one short text in, one unit vector out, in a few milliseconds on 2 CPU cores.

`SentenceEmbedder.embed` is built for corpora (sorting, padded batches, fp32 through transformers' BertModel) and
costs ~9-13 ms for one question here. This module runs the same BERT encoder as a ~40-line forward: no padding or
attention mask for a single sequence, fused QKV projection, GELU fused into its matmul where oneDNN can, float32
attention as two batched matmuls (SDPA's kernels cost more than the arithmetic for a few dozen tokens), no module
dispatch, and the query tokenised by the Rust tokenizer directly (~0.07 ms instead of ~0.27 ms through
transformers' call). Pooling, normalisation and truncation (256 tokens) are the reference's.

The linear layers' weights (`dtype`; `default_dtype()` when None), p50 per bench/route.py question, 2 threads,
interleaved query by query on a 2-core AMD EPYC Zen 4 (avx512_bf16, avx512_vnni), 2026-11-29:

    float32                                        ~9 ms     cosine 1.00000 to the reference
    fp16 weights (fbgemm, fp32 activations)        ~5.2 ms   cosine 1.00000: the reference's decisions exactly
    bf16 weights (oneDNN; only where native)       ~4.0 ms   cosine >= 0.9999: the reference's decisions exactly
    int8 dynamic (fbgemm; the default)             ~3.4 ms   cosine median 0.995, min 0.992 (0.97 for "")

int8: fbgemm's dynamic quantisation, int8 weights per output channel, activations quantised per call to 8 bits.
Where the CPU lacks VNNI, fbgemm's int16 pair sums would saturate, so the weights take 7 bits there (see
_fbgemm_linear). It is the default wherever the kernel exists (every x86-64 CPU; VNNI or not): the fastest on both
CPUs this ran on (on a Zen 3 with AVX2 only, emulated bf16 is 3-4x slower than fp32 and int8 with 7-bit weights
1.4x faster than fp16: 5.2 vs 7.2 ms), the smallest (10.6 MB of weights instead of 21 for bf16, so more of the
centroids stay in the cache beside it), and on 1 thread (the engine's default beside the web process and the
workers) ~1.35x faster than bf16. Its routing on bench/route.py's held-out questions: top-1 95.1% as with the
reference on both CPUs; a borderline question can cross the fallback threshold either way (Zen 4: on-topic
fallback 11.0% against 9.8%; Zen 3: 7.3%); 97-100% of the top-1 and fallback decisions identical to the
reference's (docs/benchmarks.md). Where decisions must be the reference's exactly, ask
for bf16 (CPUs with native bf16) or fp16 (`MOE_QUERY_WEIGHTS`). Also measured and dropped: int8 weight-only
(`_weight_int8pack_mm`, no faster than bf16), 7-bit activations (`reduce_range`; cosine 0.942-0.968), oneDNN's int8
linear (slower than fbgemm's for ~20 rows), torch.compile (fbgemm's packed weights break the graph; inductor
failed on the bf16 one).
Truncating queries at 128 tokens saves nothing on ordinary questions (~15-40 tokens) and moves the embedding of a
long pasted text far from the reference's (cosine ~0.9), so it is an option, not the default.

An LRU cache of recent queries' embeddings answers repeated questions (a playground retry, a client's identical
system prompt) without a forward.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from workers.ml.device import cpu_has_native_bf16

if TYPE_CHECKING:
    from workers.ml.embedder import SentenceEmbedder

__all__ = ["QueryEmbedder"]

DEFAULT_CACHE_SIZE = 1024

Linear = Callable[[torch.Tensor], torch.Tensor]
# What the encoder's linear layers can store their weights as (see _linear).
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.qint8)
# The names operators use for them (MOE_QUERY_WEIGHTS); "auto" is default_dtype().
WEIGHT_FORMATS = {"int8": torch.qint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _bf16_is_native() -> bool:
    # Emulated bf16 matmuls are slower than fp32; only use bf16 where the CPU has the instructions for it.
    return cpu_has_native_bf16()


def _linear(
    weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, rows_hint: int = 16, gelu: bool = False
) -> Linear:
    """y = x W^T + b (then GELU, erf form, with `gelu`) for float32 (or bf16) x, with W stored as `dtype`.

    Every fast path falls back to F.linear.

    - bfloat16: W pre-packed for oneDNN (~30% faster for a few rows), the GELU fused into the matmul as a oneDNN
      post-op (~25 us a layer saved). torch.ops.mkldnn._linear_pointwise is what inductor's CPU freezing pass
      emits; it is a private op, so any failure (or a fused GELU that differs from F.gelu) falls back to F.linear.
    - float16: fbgemm's fp16-weight GEMM (what quantize_dynamic(dtype=torch.float16) runs): half the bytes of
      fp32 weights, fp32 activations and accumulation, on AVX2 too.
    - qint8: fbgemm's dynamic int8 GEMM (what quantize_dynamic runs for nn.Linear): per-output-channel weight
      scales, each call quantises its activations to uint8 by their range.
    """
    if dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        weight, bias = weight.to(dtype), bias.to(dtype)
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
            # "gelu" with algorithm "none" is the erf form, BERT's; "tanh" would be the approximation.
            attribute, algorithm = ("gelu", "none") if gelu else ("none", "")
            probe = torch.linspace(-3, 3, 2 * weight.shape[1], dtype=weight.dtype).view(2, -1)  # (2, D_in)
            fused = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, attribute, [], algorithm)
            expected = F.linear(probe, weight, bias)
            if not torch.allclose(
                fused.float(), (F.gelu(expected) if gelu else expected).float(), rtol=0.02, atol=0.05
            ):
                raise RuntimeError("oneDNN's fused linear does not match F.linear here")

            def packed_linear(x: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, attribute, [], algorithm)
                return out

            return packed_linear
        except (AttributeError, RuntimeError):
            pass
    elif dtype in (torch.float16, torch.qint8):
        fbgemm_linear = _fbgemm_linear(weight.float(), bias.float(), dtype)
        if fbgemm_linear is not None:
            return _then_gelu(fbgemm_linear) if gelu else fbgemm_linear
    compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    weight, bias = weight.to(compute), bias.to(compute)

    def plain_linear(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    return _then_gelu(plain_linear) if gelu else plain_linear


def _fbgemm_linear(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> Linear | None:
    """fbgemm's (qnnpack's on ARM) dynamic linear with float32 weights stored as fp16 or int8; None without it."""
    run: Callable[[torch.Tensor, Any], torch.Tensor]  # (activations, packed weights) -> output
    try:
        if dtype == torch.float16:
            packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
            run = torch.ops.quantized.linear_dynamic_fp16
        else:
            # Without VNNI (AVX2: Zen 3, Skylake) fbgemm adds pairs of u8·s8 products in saturating int16, and
            # 2·255·127 > 32767: a large activation times a large weight came out wrong (0.78 off in a 64-wide
            # layer). 7-bit weights keep every pair sum below 2·255·63 = 32130 (MiniLM's query cosine to the
            # reference: min 0.979, against 0.942 for fbgemm's own guard, 7-bit activations, `reduce_range`).
            packed = _int8_packed(weight, bias, levels=127 if _int8_sums_exactly() else 63)

            def run_int8(x: torch.Tensor, packed: Any) -> torch.Tensor:
                out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, packed, False)  # 8-bit activations
                return out

            run = run_int8

        run(torch.zeros(1, weight.shape[1]), packed)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None

    def fbgemm_linear(x: torch.Tensor) -> torch.Tensor:
        return run(x, packed)

    return fbgemm_linear


def _int8_packed(weight: torch.Tensor, bias: torch.Tensor, levels: int) -> Any:
    """fbgemm's packed int8 weights: symmetric per output row, rounded to the integers -levels..levels."""
    scales = (weight.abs().amax(dim=1).clamp_min(1e-12) / levels).double()  # (out,)
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantised tensors are deprecated in favour of torchao (not here)
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, bias)


def _then_gelu(linear: Linear) -> Linear:
    def linear_gelu(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(linear(x))

    return linear_gelu


@functools.cache
def _int8_sums_exactly() -> bool:
    """Whether fbgemm's int8 linear with 8-bit activations is exact here, i.e. does not saturate in int16.

    A probe where every product is 255·127: 64 of them sum to 64 exactly with 32-bit sums (VNNI), to ~32 when pairs
    saturate in int16 (AVX2 without VNNI: Zen 3, Skylake). False also where the kernel is missing.
    """
    try:
        packed = _int8_packed(torch.ones(1, 64), torch.zeros(1), levels=127)
        result = torch.ops.quantized.linear_dynamic(torch.ones(1, 64), packed, False)  # activations to 255
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return abs(float(result) - 64.0) < 0.5


@functools.cache
def _int8_is_available() -> bool:
    """Whether this torch build has the dynamic int8 linear kernel the int8 weights need."""
    return _fbgemm_linear(torch.eye(2), torch.zeros(2), torch.qint8) is not None


def default_dtype() -> torch.dtype:
    """The weights' dtype of the fast path on this CPU: int8 where the kernel exists (the fastest; see the module's
    docstring for what it changes), else bf16 where oneDNN has native bf16 instructions, else float32."""
    if _int8_is_available():
        return torch.qint8
    return torch.bfloat16 if _bf16_is_native() else torch.float32


def weight_dtype(name: str) -> torch.dtype | None:
    """The dtype of a weight format's name (MOE_QUERY_WEIGHTS): int8, bf16, fp16, fp32, or auto (None)."""
    key = name.strip().lower()
    if key in ("", "auto"):
        return None
    if key not in WEIGHT_FORMATS:
        raise ValueError(f"Query weights can be auto, {', '.join(WEIGHT_FORMATS)}; not {name!r}.")
    if WEIGHT_FORMATS[key] == torch.bfloat16 and not _bf16_is_native():
        raise ValueError("bf16 query weights need a CPU with native bf16 (AVX512-BF16 or AMX); use fp16 for exact.")
    return WEIGHT_FORMATS[key]


def _backend_tokenize(tokenizer: Any, max_length: int) -> Callable[[str], list[int]] | None:
    """The Rust tokenizer behind a transformers fast tokenizer, set to truncate at max_length and never pad.

    The same ids as tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for one text (special
    tokens added by its post-processor), without transformers' per-call argument handling (~0.2 ms of ~0.27 ms).
    A copy: the shared tokenizer's own settings stay as they are. None when there is no such backend.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return None
    try:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_padding()
        copy.enable_truncation(max_length)
    except Exception:  # tokenizers raises its own exception types; any failure keeps the slow path
        return None

    def tokenize(text: str) -> list[int]:
        return copy.encode(text).ids

    return tokenize


@dataclass(frozen=True)
class _Layer:
    qkv: Linear  # (T, D) -> (T, 3D): query, key and value projections fused into one matmul
    out: Linear  # (T, D) -> (T, D)
    norm1: tuple[torch.Tensor, torch.Tensor]
    up: Linear  # (T, D) -> (T, 4D), GELU applied
    down: Linear  # (T, 4D) -> (T, D)
    norm2: tuple[torch.Tensor, torch.Tensor]


class _BertEncoder:
    """The forward of transformers' BertModel for ONE unpadded sequence, eval mode, absolute positions."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        """`dtype`: the linear layers' weights (see _linear); activations are bf16 for bf16 weights, else fp32."""
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"The query encoder's weights can be {', '.join(map(str, WEIGHT_DTYPES))}, not {dtype}.")
        config = model.config
        compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        state: dict[str, torch.Tensor] = {
            name: tensor.detach().to("cpu", compute) for name, tensor in model.state_dict().items()
        }
        self.heads = int(config.num_attention_heads)
        self.dim = int(config.hidden_size)
        self.scale = (self.dim // self.heads) ** -0.5  # attention's 1/sqrt(head size)
        self.eps = float(config.layer_norm_eps)
        self.dtype = dtype
        self.max_positions = int(config.max_position_embeddings)
        self.word = state["embeddings.word_embeddings.weight"]  # (V, D)
        # Token type 0 for every token, as the tokenizer emits for one sentence: fold it into the positions.
        token_type = state["embeddings.token_type_embeddings.weight"][0]  # (D,)
        self.positions = state["embeddings.position_embeddings.weight"] + token_type  # (P, D)
        self.norm0 = (state["embeddings.LayerNorm.weight"], state["embeddings.LayerNorm.bias"])
        self.layers = []
        for index in range(int(config.num_hidden_layers)):

            def get(key: str, prefix: str = f"encoder.layer.{index}.") -> torch.Tensor:
                return state[prefix + key]

            parts = ("query", "key", "value")
            self.layers.append(
                _Layer(
                    qkv=_linear(
                        torch.cat([get(f"attention.self.{part}.weight") for part in parts]),  # (3D, D)
                        torch.cat([get(f"attention.self.{part}.bias") for part in parts]),  # (3D,)
                        dtype,
                    ),
                    out=_linear(get("attention.output.dense.weight"), get("attention.output.dense.bias"), dtype),
                    norm1=(get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias")),
                    up=_linear(get("intermediate.dense.weight"), get("intermediate.dense.bias"), dtype, gelu=True),
                    down=_linear(get("output.dense.weight"), get("output.dense.bias"), dtype),
                    norm2=(get("output.LayerNorm.weight"), get("output.LayerNorm.bias")),
                )
            )

    @staticmethod
    def supports(model: Any) -> bool:
        config = getattr(model, "config", None)
        return (
            getattr(config, "model_type", None) == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and getattr(config, "hidden_act", None) == "gelu"
            and not getattr(config, "is_decoder", False)
        )

    def _attention(self, qkv: torch.Tensor, length: int) -> torch.Tensor:
        """(T, 3D) fused projections -> (T, D) attended values, all heads.

        For a few dozen tokens the attention's arithmetic is tiny and the per-op overhead is what costs. float32:
        two batched matmuls and a softmax (~40 us a layer on 2 threads) beat SDPA's flash kernel (~60 us). bf16:
        SDPA (~50 us; bf16 bmm is ~85 us), given 4-d inputs: 3-d ones take its generic math path, ~2x slower.
        """
        dim, heads = self.dim, self.heads
        if qkv.dtype == torch.bfloat16:
            split = qkv.view(1, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # (3, 1, H, T, D/H)
            attended = F.scaled_dot_product_attention(split[0], split[1], split[2])[0]  # (H, T, D/H)
        else:
            split = qkv.view(length, 3 * heads, dim // heads).transpose(0, 1)  # (3H, T, D/H)
            query, key, value = split[:heads], split[heads : 2 * heads], split[2 * heads :]  # (H, T, D/H) each
            weights = torch.bmm(query, key.transpose(1, 2)).mul_(self.scale).softmax(dim=-1)  # (H, T, T)
            attended = torch.bmm(weights, value)  # (H, T, D/H)
        return attended.transpose(0, 1).reshape(length, dim)  # (T, D)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, D) last hidden state, float32."""
        length, dim = ids.shape[0], self.dim
        x = F.embedding(ids, self.word).add_(self.positions[:length])  # (T, D); aten::index costs ~30 us more
        x = F.layer_norm(x, (dim,), *self.norm0, self.eps)
        for layer in self.layers:
            attended = self._attention(layer.qkv(x), length)  # (T, D); no mask: one sequence, no padding
            x = F.layer_norm(x + layer.out(attended), (dim,), *layer.norm1, self.eps)
            x = F.layer_norm(x + layer.down(layer.up(x)), (dim,), *layer.norm2, self.eps)
        return x.float()


class QueryEmbedder:
    """Embeds queries as the given SentenceEmbedder would, fast for one text at a time.

    Cosine to the reference: >= 0.9999 with fp32, bf16 or fp16 weights; ~0.995 (0.97 for an empty text) with int8.

    `.name` is the SentenceEmbedder's spec, so routing signatures computed with it match.
    """

    def __init__(
        self,
        reference: SentenceEmbedder,
        *,
        max_length: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dtype: torch.dtype | None = None,
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError("max_length must be at least 2 (the [CLS] and [SEP] tokens).")
        if cache_size < 0:
            raise ValueError("cache_size must be 0 (no cache) or more.")
        self.reference = reference
        self.name: str = reference.name
        self.dim: int = reference.dim
        self.pooling: str = reference.pooling
        self.max_length = min(max_length or reference.max_length, reference.max_length)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the cache is shared by the serving threads
        self._encoder: _BertEncoder | None = None
        self._tokenize: Callable[[str], list[int]] = self._reference_tokenize
        if reference.device.type == "cpu" and _BertEncoder.supports(reference.model):
            self._encoder = _BertEncoder(reference.model, dtype or default_dtype())
            self.max_length = min(self.max_length, self._encoder.max_positions)
            self._tokenize = _backend_tokenize(reference.tokenizer, self.max_length) or self._reference_tokenize

    @classmethod
    def load(cls, spec: str | None = None, **options: Any) -> QueryEmbedder:
        """The query embedder of `spec` (the default embedder when None), sharing the process's SentenceEmbedder."""
        from workers.ml.embedder import DEFAULT_EMBEDDER, shared_embedder

        return cls(shared_embedder(spec or DEFAULT_EMBEDDER), **options)

    @property
    def fast(self) -> bool:
        """False when the model is not a BERT encoder on the CPU: queries then go through the reference."""
        return self._encoder is not None

    @property
    def dtype(self) -> torch.dtype:
        return self._encoder.dtype if self._encoder is not None else torch.float32

    def embed_one(self, text: str) -> torch.Tensor:
        """(dim,) float32 unit vector of one text."""
        if not isinstance(text, str):
            raise TypeError("embed_one() takes one string.")
        if self.cache_size:
            with self._lock:
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    return cached
        vector = self._compute(text)
        if self.cache_size:
            with self._lock:
                self._cache[text] = vector
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vector

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, dim) float32 unit vectors, one forward per text (queries arrive one at a time)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string.")
        if not texts:
            return torch.empty((0, self.dim), dtype=torch.float32)
        return torch.stack([self.embed_one(text) for text in texts])

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _compute(self, text: str) -> torch.Tensor:
        if self._encoder is None:
            return self.reference.embed([text])[0]
        ids = self._tokenize(text)
        with torch.inference_mode():
            hidden = self._encoder(torch.tensor(ids, dtype=torch.long))  # (T, D)
            if self.pooling == "cls":
                pooled = hidden[0]
            elif self.pooling == "max":
                pooled = hidden.amax(dim=0)
            else:
                pooled = hidden.mean(dim=0)  # every token is real: no mask to apply
            vector = F.normalize(pooled, p=2, dim=-1)  # (D,)
        # inference_mode tensors cannot be used in autograd later; a plain clone keeps callers free.
        return vector.clone()

    def _reference_tokenize(self, text: str) -> list[int]:
        return list(self.reference.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def __repr__(self) -> str:
        mode = f"fast {self.dtype}" if self.fast else "reference"
        return f"QueryEmbedder({self.name!r}, dim={self.dim}, {mode}, max_length={self.max_length})"
