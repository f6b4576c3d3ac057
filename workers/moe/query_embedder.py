"""The router's query path: one short text in, one unit vector out, in a few milliseconds on 2 CPU cores.

`SentenceEmbedder.embed` is built for corpora (sorting, padded batches, fp32 through transformers' BertModel) and
costs ~9-13 ms for one question here. Measured on a 2-core AMD EPYC (avx512_bf16), p50 per short question:

    SentenceEmbedder.embed([q])                      ~9-11 ms  cosine 1.0 (the reference)
    same model through a plain forward, fp32         ~8 ms     the fixed cost is reading 42 MB of fp32 weights
    torch dynamic int8 (quantize_dynamic)            ~4.5 ms   cosine 0.95-0.98: activation quantisation hurts
    int8 weight-only (_weight_int8pack_mm)           ~5 ms     cosine 0.9996, no faster than bf16
    plain forward, bf16 weights (this module)        ~3.2 ms   cosine >= 0.9999 (2 threads, idle machine;
                                                               ~5.5 ms on 1 thread beside another busy process)

So this module runs the same BERT encoder as a ~40-line forward over bf16 weights (fp32 where the CPU has no
native bf16): no padding or attention mask for a single sequence, fused QKV projection, no module dispatch, weights
pre-packed for oneDNN where available. Pooling, normalisation and truncation (256 tokens) are the reference's.
Truncating queries at 128 tokens was measured too: it saves nothing on ordinary questions (~15-40 tokens) and
moves the embedding of a long pasted text far from the reference's (cosine ~0.9), so it is an option, not the
default.

An LRU cache of recent queries' embeddings answers repeated questions (a playground retry, a client's identical
system prompt) without a forward.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from workers.ml.embedder import SentenceEmbedder

__all__ = ["QueryEmbedder"]

DEFAULT_CACHE_SIZE = 1024

Linear = Callable[[torch.Tensor], torch.Tensor]


def _bf16_is_native() -> bool:
    # Emulated bf16 matmuls are slower than fp32; only use bf16 where oneDNN has the instructions for it.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _linear(weight: torch.Tensor, bias: torch.Tensor, rows_hint: int = 16) -> Linear:
    """y = x W^T + b, with W pre-packed for oneDNN when the dtype is bf16 (~30% faster for a few rows).

    torch.ops.mkldnn._linear_pointwise is what inductor's CPU freezing pass emits; it is a private op, so any
    failure falls back to F.linear (same result). It can go once torch exposes weight pre-packing publicly.
    """
    if weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
            probe = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
            torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")

            def packed_linear(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

            return packed_linear
        except (AttributeError, RuntimeError):
            pass

    def plain_linear(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    return plain_linear


@dataclass(frozen=True)
class _Layer:
    qkv: Linear  # (T, D) -> (T, 3D): query, key and value projections fused into one matmul
    out: Linear  # (T, D) -> (T, D)
    norm1: tuple[torch.Tensor, torch.Tensor]
    up: Linear  # (T, D) -> (T, 4D)
    down: Linear  # (T, 4D) -> (T, D)
    norm2: tuple[torch.Tensor, torch.Tensor]


class _BertEncoder:
    """The forward of transformers' BertModel for ONE unpadded sequence, eval mode, absolute positions."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        config = model.config
        state = {name: tensor.detach().to("cpu", dtype) for name, tensor in model.state_dict().items()}
        self.heads = int(config.num_attention_heads)
        self.dim = int(config.hidden_size)
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
                    ),
                    out=_linear(get("attention.output.dense.weight"), get("attention.output.dense.bias")),
                    norm1=(get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias")),
                    up=_linear(get("intermediate.dense.weight"), get("intermediate.dense.bias")),
                    down=_linear(get("output.dense.weight"), get("output.dense.bias")),
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

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, D) last hidden state, float32."""
        length, dim, heads = ids.shape[0], self.dim, self.heads
        x = self.word[ids] + self.positions[:length]  # (T, D)
        x = F.layer_norm(x, (dim,), *self.norm0, self.eps)
        for layer in self.layers:
            qkv = layer.qkv(x).view(length, 3, heads, dim // heads).permute(1, 2, 0, 3)  # (3, H, T, D/H)
            attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (H, T, D/H); no mask: no padding
            attended = attended.transpose(0, 1).reshape(length, dim)  # (T, D)
            x = F.layer_norm(x + layer.out(attended), (dim,), *layer.norm1, self.eps)
            x = F.layer_norm(x + layer.down(F.gelu(layer.up(x))), (dim,), *layer.norm2, self.eps)
        return x.float()


class QueryEmbedder:
    """Embeds queries as the given SentenceEmbedder would (cosine >= 0.999), fast for one text at a time.

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
        if reference.device.type == "cpu" and _BertEncoder.supports(reference.model):
            chosen = dtype or (torch.bfloat16 if _bf16_is_native() else torch.float32)
            self._encoder = _BertEncoder(reference.model, chosen)
            self.max_length = min(self.max_length, self._encoder.max_positions)

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
        ids = self.reference.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
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

    def __repr__(self) -> str:
        mode = f"fast {self.dtype}" if self.fast else "reference"
        return f"QueryEmbedder({self.name!r}, dim={self.dim}, {mode}, max_length={self.max_length})"
