"""Fixtures for the train tests: one tiny pretraining run shared by the module tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """A few steps of the tiny preset on the tiny dataset: (run_dir, summary)."""
    import torch

    from phosphene.train.pretrain import pretrain

    torch.set_num_threads(1)  # the CI machine is shared; one thread avoids OpenMP spinning
    out = tmp_path_factory.mktemp("runs") / "tiny"
    summary = pretrain(tiny_dataset, "tiny", out_dir=out, steps=4, batch_size=4, val_every=2,
                       val_windows=8, device="cpu", seed=0)
    return out, summary
