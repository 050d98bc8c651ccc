"""A tiny Llama saved as a Hugging Face directory with a BPE tokenizer trained on a tiny text
(no downloads), and that text as a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TEXT = "\n".join(
    f"line {i}: the quick brown fox jumps over the lazy dog while the cat sleeps {i % 7}" for i in range(400)
)


def make_tiny_hf(root: Path) -> tuple[Path, Path]:
    tr = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = root / "tiny.txt"
    text.write_text(TEXT)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>"]))
    fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tr.LlamaForCausalLM(cfg)
    out = root / "tiny-llama"
    model.save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return out, text
