import os

import pytest
import torch

os.environ.setdefault("SCALEWISE_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the caller may ask for fewer
    yield
