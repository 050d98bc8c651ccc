import copy

import pytest
import torch

import sparsecraft
from sparsecraft.oneshot.recovery import RecoveryObjective, recover, squarehead_loss

from .tiny import calib_ids, tiny_llama


def test_squarehead_loss_formula():
    t = [torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0])]
    s = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])]
    # block 0: mean((0, 2)^2) = 2 over mean(t^2) = 1; block 1: mean((0, 2)^2) = 2 over 4
    assert float(squarehead_loss(s, t, eps=0.0)) == pytest.approx(2.0 + 0.5)
    assert float(squarehead_loss(t, t)) == 0.0


def pruned_pair(seed=2):
    teacher = tiny_llama(seed=seed)
    student = copy.deepcopy(teacher)
    sparsecraft.prune(student, 0.6, pattern="2:4", progress=False)  # |w|, 2 of every 4 kept
    return teacher, student


def by_hand_terms(student, teacher, ids, temperature):
    """task, SquareHead feature loss and logit KD written out from their definitions, with
    this test's own hooks on the decoder layers."""
    outs = {"s": [], "t": []}
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: outs[k].append(o[0] if isinstance(o, tuple) else o))
               for k, model in (("s", student), ("t", teacher)) for layer in model.model.layers]
    with torch.no_grad():
        zs = student(input_ids=ids).logits.double()
        zt = teacher(input_ids=ids).logits.double()
    for h in handles:
        h.remove()
    # task: -log softmax(z)[next token], averaged over the b * (L - 1) predictions
    pred, nxt = zs[:, :-1], ids[:, 1:]
    nll = torch.logsumexp(pred, -1) - pred.gather(-1, nxt[..., None])[..., 0]
    task = nll.sum() / nll.numel()
    feature = sum(float(((s.double() - t.double()) ** 2).sum() / s.numel())
                  / (float((t.double() ** 2).sum() / t.numel()) + 1e-6) for s, t in zip(outs["s"], outs["t"]))
    # KD: T^2 * mean over positions of sum_v p_t (log p_t - log p_s), p = softmax(z / T)
    pt = torch.exp(zt / temperature) / torch.exp(zt / temperature).sum(-1, keepdim=True)
    ps = torch.exp(zs / temperature) / torch.exp(zs / temperature).sum(-1, keepdim=True)
    kd = temperature**2 * float((pt * (pt.log() - ps.log())).sum(-1).mean())
    return float(task), feature, kd


def test_combined_loss_value_matches_a_by_hand_computation():
    teacher, student = pruned_pair()
    ids = calib_ids(3, 12, seed=4)
    task, feature, kd = by_hand_terms(student, teacher, ids, temperature=2.0)
    assert feature > 1e-3 and kd > 1e-6  # the pruned student really differs from its teacher
    with torch.no_grad(), RecoveryObjective(student, teacher, "lm+squarehead", feature_weight=0.7, kd_weight=0.3,
                                            kd_temperature=2.0) as objective:
        total, parts = objective(ids)
    assert parts["task"] == pytest.approx(task, rel=1e-5)
    assert parts["feature"] == pytest.approx(feature, rel=1e-4)
    assert parts["kd"] == pytest.approx(kd, rel=1e-3, abs=1e-8)
    assert float(total) == pytest.approx(task + 0.7 * feature + 0.3 * kd, rel=1e-5)
    # the single-term losses are the same terms alone
    with torch.no_grad(), RecoveryObjective(student, teacher, "squarehead") as objective:
        assert float(objective(ids)[0]) == pytest.approx(feature, rel=1e-4)
    with torch.no_grad(), RecoveryObjective(student, None, "lm") as objective:
        assert float(objective(ids)[0]) == pytest.approx(task, rel=1e-5)


def terms_after_recovery(loss, **kw):
    """(terms before, terms after) on the training windows, and the recovery result."""
    torch.manual_seed(0)
    teacher, student = pruned_pair()
    ids = calib_ids(4, 16)

    def terms():
        with torch.no_grad(), RecoveryObjective(student, teacher, "lm+squarehead") as objective:
            return objective(ids)[1]

    before = terms()
    masks_before = [mp.mask.clone() for mp in sparsecraft.masked_params(student)]
    res = recover(student, ids, teacher=teacher, loss=loss, steps=25, lr=3e-3, batch_size=4, progress=False, **kw)
    for mp, m in zip(sparsecraft.masked_params(student), masks_before):
        assert torch.equal(mp.mask, m) and (mp.param[~mp.mask] == 0).all()
    assert res.steps == 25 and len(res.losses) == 25
    return before, terms(), res


@pytest.fixture(scope="module")
def lm_only():
    return terms_after_recovery("lm")


def test_squarehead_recovery_pulls_the_student_onto_the_teacher():
    before, after, _ = terms_after_recovery("squarehead")
    # measured: 0.058 -> 0.005 (25 AdamW steps at lr 3e-3); a recovery that does not follow the
    # feature loss leaves it near 0.058
    assert after["feature"] < 0.25 * before["feature"]


def test_lm_recovery_lowers_the_task_loss(lm_only):
    before, after, _ = lm_only
    assert after["task"] < 0.6 * before["task"]  # measured 4.16 -> 1.75


def test_combined_recovery_lowers_the_task_loss_and_keeps_the_features(lm_only):
    lm_after = lm_only[1]
    before, after, res = terms_after_recovery("lm+squarehead", feature_weight=1.0)
    assert set(res.parts[0]) == {"task", "feature"}
    assert after["task"] < 0.6 * before["task"]  # measured 4.16 -> 1.93
    # the task loss alone drifts the features away from the teacher (0.06 -> 5.8); the feature
    # term holds them (-> 0.22)
    assert after["feature"] < 0.2 * lm_after["feature"]


def test_recovery_option_errors():
    teacher, student = pruned_pair()
    ids = calib_ids(2, 8)
    with pytest.raises(sparsecraft.SparsecraftError, match="unknown recovery loss"):
        recover(student, ids, teacher, loss="l2", steps=1, progress=False)
    with pytest.raises(sparsecraft.SparsecraftError, match="teacher"):
        recover(student, ids, None, loss="lm+squarehead", steps=1, progress=False)
    with pytest.raises(sparsecraft.SparsecraftError, match="logit KD needs the dense teacher"):
        recover(student, ids, None, loss="lm", steps=1, progress=False, kd_weight=0.5)
    with pytest.raises(sparsecraft.SparsecraftError, match="temperature"):
        recover(student, ids, teacher, loss="lm", steps=1, progress=False, kd_weight=0.5, kd_temperature=0.0)


def test_recipe_validation_knows_every_recovery_loss():
    from sparsecraft.jobs.prune_llm import RECOVERY_LOSSES
    from sparsecraft.oneshot.recovery import LOSSES

    assert RECOVERY_LOSSES == LOSSES
