"""The "which play" task: spoken lines only, a deterministic split by position, one-line errors."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.play_lines import EncoderClassifier, evenly, play_names, play_task, spoken_lines
from tests.oneshot.tiny import tiny_bert


def test_spoken_lines_drop_persons_directions_and_speaker_tags():
    lines = spoken_lines("julius_caesar")
    assert "JULIUS CAESAR" not in lines and not any("PERSONS" in ln for ln in lines)
    assert not any("[" in ln or "]" in ln or "Exeunt" in ln or ln.startswith("SCENE") for ln in lines)
    assert all(len(ln.split()) >= 4 for ln in lines)
    assert lines[0] == "Hence! home, you idle creatures, get you home!"
    assert lines[-1] == "To part the glories of this happy day."


def test_play_task_split_is_deterministic_and_by_position():
    plays = ("julius_caesar", "tempest")
    a, b = play_task(plays, 20, 10), play_task(plays, 20, 10)
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    assert a.train_labels.tolist() == [0] * 20 + [1] * 20 and a.test_labels.tolist() == [0] * 10 + [1] * 10
    assert not set(a.train_texts) & set(a.test_texts)
    caesar = " ".join(spoken_lines("julius_caesar"))
    # every test passage of a play comes after every training passage of that play
    assert max(caesar.index(t) for t in a.train_texts[:20]) < min(caesar.index(t) for t in a.test_texts[:10])
    assert caesar.index(a.test_texts[9]) > caesar.index("Why, farewell, Portia")


def test_evenly():
    assert evenly(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly([1, 2], 5) == [1, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"plays": ("hamlet", "hamlet")}, "plays must name at least two different plays"),
    ({"plays": ("hamlet", "nope")}, "unknown play 'nope'; allowed: .*hamlet"),
    ({"n_train": 0}, "n_train must be an integer >= 1"),
    ({"n_train": 100000}, "julius_caesar has .* training and .* test passages"),
])
def test_bad_task_is_one_line_error(kwargs, message):
    args = {"plays": ("julius_caesar", "tempest"), "n_train": 5, "n_test": 5, **kwargs}
    with pytest.raises(SparsecraftError, match=message) as err:
        play_task(**args)
    assert "\n" not in str(err.value)


def test_encoder_classifier_mean_pools_over_the_mask():
    model = EncoderClassifier(tiny_bert(), 3)
    ids = torch.randint(0, 64, (2, 5))
    full = torch.ones(2, 5, dtype=torch.long)
    half = full.clone()
    half[:, 3:] = 0
    h = model.encoder(input_ids=ids, attention_mask=half).last_hidden_state
    assert torch.allclose(model.features(ids, half), h[:, :3].mean(1), atol=1e-6)
    assert model(ids, full).shape == (2, 3)
    assert "tempest" in play_names()
