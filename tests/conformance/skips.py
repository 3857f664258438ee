"""The reviewed list of Keras tests that do not apply to ``loops.Trainer``,
each with its reason. Keys are ``file::Class::test`` (a key also skips every
parametrization ``test[...]`` / ``test_<suffix>`` generated from it); the
value is the reason, or a dict of reasons per backend (``"*"``: any).

Every entry is one of:
- a test that overrides Keras's per-backend ``train_step``/``test_step``
  (on jax they take and return ``state``): with loops a custom step is a
  ``Trainer`` subclass, written once (``tests/test_custom_step.py``);
- a test that asserts Keras's own internals rather than behaviour;
- a test of an optional package that the project does not install.
"""

from __future__ import annotations

_CUSTOM_STEP = ("overrides Keras's per-backend train_step/test_step on the model; with loops a custom step "
                "is a Trainer subclass (tests/test_custom_step.py)")
_OPTIONAL = "needs the optional package {}, which loops does not install"

SKIPS: dict[str, object] = {
    "trainers/trainer_test.py::TestTrainer::test_fit_with_custom_train_step": _CUSTOM_STEP,
    "trainers/trainer_test.py::TestTrainer::test_evaluate_with_custom_test_step": _CUSTOM_STEP,
    "trainers/trainer_test.py::TestTrainer::test_fit_eval_flow_for_jax_model_weights": (
        "asserts an internal of Keras's jax trainer (model variables emptied to None during fit); the "
        "Trainer keeps its jax state on device in its own runner and syncs it back the same way"),
    "trainers/trainer_test.py::TestTrainer::test_fit_with_data_adapter_grain": _OPTIONAL.format("grain"),
    "callbacks/orbax_checkpoint_test.py": _OPTIONAL.format("orbax-checkpoint"),
}


def reason(path: str, test: str, backend: str) -> str | None:
    short = path.replace("\\", "/").split("keras/src/")[-1]
    full = short + "::" + test
    for key, why in SKIPS.items():
        if key == short or full == key or full.startswith((key + "[", key + "_", key + "::")):
            if isinstance(why, dict):
                return why.get(backend) or why.get("*")
            return str(why)
    return None
