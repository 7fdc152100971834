"""Test session settings: one torch thread per process (pytest -n 2 runs one worker per core; more threads
than cores make torch's spinning workers crawl on a loaded 2-core machine), and the `device` fixture.

`device` runs a test once per device under test: "cpu" always and "cuda" when torch sees a GPU, or the
comma-separated list in MIRAS_TEST_DEVICES (e.g. MIRAS_TEST_DEVICES=cuda runs only the GPU cases;
"cpu,cuda", "cuda:1" and "meta" work too). A device named there that this machine lacks fails the test
instead of skipping it, so a GPU run that found no GPU cannot pass. On CUDA, TF32 matmuls and convolutions are
off for the test (the tests compare float32 results at float32's precision).
"""
import os

import pytest
import torch

torch.set_num_threads(1)

DEVICES_ENV = "MIRAS_TEST_DEVICES"


def devices_under_test() -> list[str]:
    """MIRAS_TEST_DEVICES split at commas, else ["cpu"] plus "cuda" when torch.cuda.is_available()."""
    given = [d.strip() for d in os.environ.get(DEVICES_ENV, "").split(",") if d.strip()]
    return given or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices_under_test())
def device(request) -> torch.device:
    try:
        dev = torch.device(request.param)
    except (RuntimeError, ValueError):
        pytest.fail(f"{DEVICES_ENV} names {request.param!r}, which is not a torch device (e.g. cpu, cuda, cuda:1)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            pytest.fail(f"{DEVICES_ENV} names {request.param!r} but torch {torch.__version__} sees no GPU")
        if dev.index is None:                  # "cuda" -> "cuda:0": tensors report their device with its index
            dev = torch.device("cuda", torch.cuda.current_device())
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield dev
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        return
    yield dev
