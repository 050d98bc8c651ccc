from sparsecraft.training.lm_plots import plot_expert_load, plot_lm_curves

CURVES = [{"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10, "lr": 0.001,
           "load_cv": {"layers.0.mlp": 0.5 / s, "layers.1.mlp": 0.2}} for s in (1, 2, 3)]


def test_plots_are_written(tmp_path):
    a = plot_lm_curves(CURVES, tmp_path / "curves.png")
    b = plot_expert_load(CURVES, tmp_path / "load.png")
    for p in (a, b):
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left
