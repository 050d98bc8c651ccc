import pytest
import torch

from sparsecraft.evaluation.embedding import embedding_similarity, mean_pool, sentence_embeddings

from ..oneshot.tiny import calib_ids, tiny_bert


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert mean_pool(h, m).tolist() == [[2.0, 3.0]]


def test_similarity_is_one_for_the_same_model_and_lower_after_pruning():
    model = tiny_bert()
    batches = [{"input_ids": calib_ids(4, 10), "attention_mask": torch.ones(4, 10, dtype=torch.long)}]
    ref = sentence_embeddings(model, batches)
    assert embedding_similarity(ref, sentence_embeddings(model, batches)) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) > 0.7)
    # a random tiny BERT is dominated by its embeddings (residual path): the drop is small but real
    assert embedding_similarity(ref, sentence_embeddings(model, batches)) < 0.9999
