"""The training callbacks' own decisions, in this process (no model, no launch).

`SameBestCheckpointCallback` names the best step's checkpoint once its folder exists; with
several ranks it then takes rank 0's answer. That agreement is exercised for real by the FSDP2
case of tests/test_strategies.py, which evaluates and loads the best checkpoint at the end (it
hung there without the callback: the ranks disagreed on the best checkpoint).
"""

from __future__ import annotations

import os
from types import SimpleNamespace


def test_alone_the_best_checkpoint_is_the_best_step_s_folder_when_it_exists(tmp_path):
    from llmwizard.runner.rank.callbacks import SameBestCheckpointCallback

    (tmp_path / "checkpoint-5").mkdir()
    state = SimpleNamespace(best_global_step=5, best_model_checkpoint=None)
    SameBestCheckpointCallback().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert state.best_model_checkpoint == os.path.join(tmp_path, "checkpoint-5")
    state.best_global_step = 10  # a best step whose save did not happen keeps the earlier best
    SameBestCheckpointCallback().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert state.best_model_checkpoint == os.path.join(tmp_path, "checkpoint-5")
