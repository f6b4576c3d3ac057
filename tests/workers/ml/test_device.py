"""Device selection, default dtypes and thread caps."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from workers.ml import device
from workers.ml.device import DeviceUnavailable, configure_torch_threads, default_dtype, select_device


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.device("cuda", n) is only a name: nothing touches a driver until a tensor is placed on it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in device.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)  # monkeypatch puts the original values back afterwards
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_it_picks_the_cpu_when_asked() -> None:
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.usefixtures("no_cuda")
def test_it_falls_back_to_the_cpu_without_cuda() -> None:
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")


@pytest.mark.usefixtures("two_gpus")
def test_it_picks_cuda_automatically_when_present() -> None:
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda") == torch.device("cuda")
    assert select_device(" CUDA:1 ") == torch.device("cuda", 1)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("preference", ["cuda", "cuda:0"])
def test_it_says_clearly_that_cuda_is_absent(preference: str) -> None:
    with pytest.raises(DeviceUnavailable, match=f"Device '{preference}' was requested but this machine has no"):
        select_device(preference)


@pytest.mark.usefixtures("two_gpus")
def test_it_refuses_a_gpu_index_the_machine_lacks() -> None:
    with pytest.raises(DeviceUnavailable, match="only 2 CUDA GPU"):
        select_device("cuda:2")


@pytest.mark.parametrize("preference", ["tpu", "cuda:x", "mps", "gpu"])
def test_it_rejects_an_unknown_device_name(preference: str) -> None:
    with pytest.raises(ValueError, match="use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        select_device(preference)


def test_it_uses_fp32_on_the_cpu() -> None:
    assert default_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_it_uses_half_precision_on_gpus(bf16: bool, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)

    assert default_dtype(torch.device("cuda", 0)) == expected


@pytest.mark.usefixtures("restore_threads")
def test_it_caps_torch_and_child_process_threads() -> None:
    configure_torch_threads(1)

    assert torch.get_num_threads() == 1
    assert all(os.environ[name] == "1" for name in device.THREAD_ENV_VARS)


@pytest.mark.usefixtures("restore_threads")
def test_it_can_be_called_again_after_torch_started_working() -> None:
    configure_torch_threads(2)
    torch.ones(64, 64) @ torch.ones(64, 64)  # parallel work has run: the inter-op pool can no longer change

    configure_torch_threads(1)

    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("num_threads", [0, -1])
def test_it_leaves_the_defaults_for_zero_or_negative_counts(num_threads: int) -> None:
    before = torch.get_num_threads()

    configure_torch_threads(num_threads)

    assert torch.get_num_threads() == before
    assert not any(name in os.environ for name in device.THREAD_ENV_VARS)


def test_it_reports_native_bf16_as_a_bool_and_false_where_torch_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(device.cpu_has_native_bf16(), bool)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert device.cpu_has_native_bf16() is False


def test_it_reports_native_bf16_for_amx_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert device.cpu_has_native_bf16() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert device.cpu_has_native_bf16() is False
