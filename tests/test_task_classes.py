"""Every training stage's task is a `train.loop.Task` (forward(batch) -> {"loss", ...}, on_step_start)."""

from __future__ import annotations

import pytest

from lostcli.train.classifier import ClassifierTask
from lostcli.train.gpt import GPTTask
from lostcli.train.loop import Task
from lostcli.train.rida import RidaTask
from lostcli.train.tokenizer import TokenizerTask
from lostcli.train.vae import SparseVaeTask, VaeTask


@pytest.mark.parametrize("cls", [TokenizerTask, VaeTask, SparseVaeTask, RidaTask, GPTTask, ClassifierTask])
def test_stage_tasks_subclass_task(cls):
    assert issubclass(cls, Task)
