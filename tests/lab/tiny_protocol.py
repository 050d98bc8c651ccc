"""Run a SmolLM2 lab experiment end to end on a tiny random Llama: ``load_model`` and
``build_protocol`` patched to return the tiny model and random windows."""

from types import SimpleNamespace

import sparsecraft.data.text as text
import sparsecraft.models as models
from tests.oneshot.tiny import calib_ids, tiny_llama


def patch_tiny(monkeypatch, layers: int = 4) -> None:
    model = tiny_llama(layers=layers)
    monkeypatch.setattr(models, "load_model", lambda name: SimpleNamespace(model=model, tokenizer=None))

    def protocol(tok, source, n_calib, n_eval, seq_len, seed=0):
        return text.TextProtocol(calib_ids(n_calib, seq_len), calib_ids(n_eval, seq_len, seed=1), {})

    monkeypatch.setattr(text, "build_protocol", protocol)
