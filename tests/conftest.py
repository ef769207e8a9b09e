import os

import pytest
import torch

os.environ.setdefault("SCALEWISE_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield
