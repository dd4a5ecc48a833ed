"""phosphene.train: the workstation side (MAE teacher, pretraining, probes, diagnostics).

Public names are imported lazily, so `import phosphene.train.importers` (or any light
submodule) does not pay for torch and scikit-learn.
"""

from __future__ import annotations

import importlib

from phosphene import __version__

_EXPORTS = {
    "MAEConfig": "config", "TrainConfig": "config", "MODEL_PRESETS": "config",
    "MaskedAutoencoder": "mae", "build_model": "mae", "count_parameters": "mae",
    "WindowSampler": "data", "split_sessions": "data", "trial_windows": "data",
    "lr_at": "pretrain",  # the pretrain() function: phosphene.train.pretrain.pretrain
    "load_teacher": "checkpoint", "check_dataset_compatible": "checkpoint",
    "probe_task": "probe", "fold_probe": "probe", "save_probe": "probe", "load_probe": "probe",
    "teacher_encode_fn": "probe", "format_table": "probe", "plot_label_efficiency": "probe",
    "run_diagnostics": "diagnostics", "mantel_test": "diagnostics",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"phosphene.train.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'phosphene.train' has no attribute {name!r}")
