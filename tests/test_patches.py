"""The library internals llmwizard patches exist in the installed versions: an upgrade that drops
one fails here first, and at run time the rank names the library, its version and the need."""

from __future__ import annotations

import pytest

from llmwizard.runner.rank import patches


@pytest.mark.parametrize("name", sorted(patches.GUARDED))
def test_each_guarded_internal_exists_in_the_installed_version(name):
    assert patches.GUARDED[name]() is not None, name


def test_a_missing_internal_names_the_library_its_version_and_the_need(monkeypatch):
    from importlib.metadata import version

    from peft.tuners import tuners_utils

    monkeypatch.delattr(tuners_utils, "_get_tuner_state_dict_key_prefixes")
    with pytest.raises(patches.LibraryChanged) as raised:
        patches.peft_sees_through_checkpoint_wrappers()
    message = str(raised.value)
    assert f"peft {version('peft')} has no peft.tuners.tuners_utils._get_tuner_state_dict_key_prefixes" in message
    assert "adapter" in message and "Fix:" in message


def test_a_changed_signature_is_caught_too():
    class Owner:
        @staticmethod
        def helper(model):
            return model

    with pytest.raises(patches.LibraryChanged, match="a 'adapter_name' parameter on Owner.helper"):
        patches.internal("peft", Owner, "helper", "do something", parameter="adapter_name")


def test_a_missing_deepspeed_table_is_a_warning_not_a_stop(monkeypatch, capsys):
    import deepspeed.ops

    # deepspeed.ops builds the table lazily in a module __getattr__, so a deleted one comes back:
    # stand in for a release without it.
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", None, raising=False)
    patches.deepspeed_skips_its_shm_kernel()
    err = capsys.readouterr().err
    assert "warning: deepspeed" in err and "__compatible_ops__" in err


def test_the_patches_apply_and_are_idempotent(monkeypatch):
    from accelerate.state import AcceleratorState
    from peft.tuners import tuners_utils

    # Undone after the test: other tests in this process see the libraries as installed.
    monkeypatch.setattr(AcceleratorState, "__init__", AcceleratorState.__init__)
    monkeypatch.setattr(tuners_utils, "_get_tuner_state_dict_key_prefixes",
                        tuners_utils._get_tuner_state_dict_key_prefixes)

    patches.allow_fsdp_on_cpu()
    patches.allow_fsdp_on_cpu()
    assert AcceleratorState.__init__._llmwizard
    patches.peft_sees_through_checkpoint_wrappers()
    first = tuners_utils._get_tuner_state_dict_key_prefixes
    patches.peft_sees_through_checkpoint_wrappers()
    assert tuners_utils._get_tuner_state_dict_key_prefixes is first and first._llmwizard


def test_adalomo_moments_survive_a_checkpoint_round_trip(monkeypatch, tmp_path):
    """lomo-optim keeps its second moments outside torch's optimizer state; after the patch the
    state_dict the Trainer saves holds them, and loading it restores them and the step count.
    (lomo-optim allocates with `.cuda()`: the CPU stands in for the GPU, the hardware boundary.)"""
    import torch
    from lomo_optim import AdaLomo

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(AdaLomo, "state_dict", AdaLomo.state_dict)  # undone after the test
    monkeypatch.setattr(AdaLomo, "load_state_dict", AdaLomo.load_state_dict)
    monkeypatch.setattr(AdaLomo, "_llmwizard_moments", False, raising=False)
    patches.adalomo_keeps_its_moments()

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    trained = model()
    optimizer = AdaLomo(trained, lr=1e-2)
    for _ in range(3):
        optimizer.fused_backward(trained(torch.randn(4, 8)).pow(2).mean(), 1e-2)
    assert optimizer.exp_avg_sq_row["0.weight"].abs().sum() > 0  # it learned moments
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")  # what the Trainer does

    resumed = AdaLomo(model(), lr=1e-2)
    resumed.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert resumed.step_num == 3
    for name in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
        assert set(getattr(resumed, name)) == set(getattr(optimizer, name))
        for key, tensor in getattr(optimizer, name).items():
            assert torch.equal(getattr(resumed, name)[key], tensor), (name, key)
