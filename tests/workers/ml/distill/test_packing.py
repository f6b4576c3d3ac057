from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.ml.catalog import LoadedModel
from workers.ml.distill.losses import IGNORE_INDEX
from workers.ml.distill.packing import collate, epoch_rows, pack_rows


def test_it_fills_rows_first_fit_without_exceeding_the_row_length() -> None:
    lengths = [5, 3, 4, 2, 6]
    rows = pack_rows(lengths, range(5), seq_len=8)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert rows == [[0, 1], [2, 3], [4]]


def test_it_shuffles_deterministically_per_seed_and_epoch() -> None:
    lengths = [3] * 20
    assert epoch_rows(lengths, 9, seed=1, epoch=0) == epoch_rows(lengths, 9, seed=1, epoch=0)
    assert epoch_rows(lengths, 9, seed=1, epoch=0) != epoch_rows(lengths, 9, seed=1, epoch=1)


def test_it_never_labels_across_a_segment_boundary() -> None:
    batch = collate([(1, 2, 3), (4, 5)], [[0, 1]], seq_len=7, pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch.labels.tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_it_gives_the_same_loss_packed_as_unpacked(tiny_student: LoadedModel) -> None:
    """No attention across documents: packing three documents into one row changes nothing."""
    model = tiny_student.model.eval()
    tokenizer = tiny_student.tokenizer
    docs = [
        tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        for text in ("the alpha code is alpha.", "beta and gamma are values of delta.", "omega")
    ]
    docs = [doc for doc in docs if len(doc) >= 2]
    total = sum(len(doc) for doc in docs)
    packed = collate(docs, [list(range(len(docs)))], seq_len=total + 3, pad_token_id=0)
    with torch.no_grad():
        # use_cache=False: transformers detects packing from position_ids only without a KV cache.
        packed_logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
        packed_nll = F.cross_entropy(packed_logits[0], packed.labels[0], reduction="sum")
        separate_nll = torch.zeros(())
        for doc in docs:
            ids = torch.tensor([doc])
            logits = model(input_ids=ids).logits
            separate_nll += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    torch.testing.assert_close(packed_nll, separate_nll, rtol=1e-5, atol=1e-4)
