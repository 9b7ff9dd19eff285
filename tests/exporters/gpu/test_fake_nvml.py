"""The fake pynvml checked against the installed nvidia-ml-py, not against guesses.

The real module's wrappers are run on top of a stand-in for ``libnvidia-ml.so`` (a Python object
in ``pynvml.nvmlLib`` whose attributes are the C symbols, each returning an ``nvmlReturn_t``), so
what they raise for a missing symbol or an error code is what nvidia-ml-py itself raises. The fake
must raise the same class for the same driver.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest

from tests.exporters.gpu.fake_nvml import (
    R470,
    R535,
    FakeDevice,
    FakeEventSet,
    FakeHandle,
    FakeMig,
    FakeNvml,
    two_gpus,
)


class _CLibrary:
    """The C library as pynvml sees it: ``getattr(nvmlLib, symbol)``; a missing symbol is an
    AttributeError there. Every symbol returns ``code``."""

    def __init__(self, missing: frozenset[str], code: int) -> None:
        self._missing = missing
        self._code = code

    def __getattr__(self, symbol: str) -> Callable[..., int]:
        if symbol.startswith("_") or symbol in self._missing:
            raise AttributeError(symbol)
        return lambda *args: self._code


@pytest.fixture
def c_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[frozenset[str], int], None]]:
    def install(missing: frozenset[str], code: int = pynvml.NVML_SUCCESS) -> None:
        monkeypatch.setattr(pynvml, "nvmlLib", _CLibrary(missing, code))
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})

    yield install


def _raised(fn: Callable[..., Any], *args: Any) -> type[BaseException] | None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return type(exc)
    return None


# (function name, arguments for the real module, arguments for the fake) for each call the
# backend makes whose symbol an older driver may lack.
CALLS: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("nvmlDeviceGetComputeRunningProcesses", (None,), (FakeHandle(0),)),
    ("nvmlDeviceGetComputeRunningProcesses_v3", (None,), (FakeHandle(0),)),
    ("nvmlDeviceGetCurrentClocksEventReasons", (None,), (FakeHandle(0),)),
    ("nvmlDeviceGetMemoryInfo", (None, pynvml.nvmlMemory_v2), (FakeHandle(0), pynvml.nvmlMemory_v2)),
    ("nvmlGpmQueryDeviceSupport", (None,), (FakeHandle(0),)),
    ("nvmlGpmSampleAlloc", (), ()),
]


@pytest.mark.parametrize(("name", "real_args", "fake_args"), CALLS, ids=[c[0] for c in CALLS])
def test_missing_symbol_raises_what_the_real_module_raises(
    c_library: Callable[[frozenset[str], int], None], name: str, real_args: tuple[Any, ...],
    fake_args: tuple[Any, ...],
) -> None:
    c_library(R470.missing_symbols, pynvml.NVML_SUCCESS)
    expected = _raised(getattr(pynvml, name), *real_args)
    assert expected in (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError)
    fake = FakeNvml(two_gpus(), profile=R470)
    fake.nvmlInit()
    assert _raised(getattr(fake, name), *fake_args) is expected


def test_the_unversioned_process_list_is_a_version_mismatch_not_an_nvml_error(
    c_library: Callable[[frozenset[str], int], None],
) -> None:
    """The premise of the R470 fallback: this escapes ``except NVMLError``."""
    c_library(frozenset({"nvmlDeviceGetComputeRunningProcesses_v3"}), pynvml.NVML_SUCCESS)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlDeviceGetComputeRunningProcesses(None)
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    # ... while _v2 exists on that driver and answers.
    assert pynvml.nvmlDeviceGetComputeRunningProcesses_v2(None) == []


def test_the_same_functions_are_version_checked_as_in_the_real_module() -> None:
    # Every function decorated with throwOnVersionMismatch runs that decorator's inner wrapper.
    checked = pynvml.throwOnVersionMismatch(lambda: None).__code__
    wrapped = 0
    for name, member in inspect.getmembers(FakeNvml, inspect.isfunction):
        if not name.startswith("nvml"):
            continue
        assert hasattr(pynvml, name), f"the real module has no {name}"
        is_checked = getattr(pynvml, name).__code__ is checked
        assert (member.__code__ is checked) == is_checked, name
        wrapped += is_checked
    assert wrapped >= 1


@pytest.mark.parametrize(
    ("code", "fake_setup"),
    [
        (pynvml.NVML_ERROR_NOT_SUPPORTED, lambda d: d.unsupported.add("nvmlDeviceGetPowerUsage")),
        (pynvml.NVML_ERROR_NO_PERMISSION, lambda d: d.failing.__setitem__(
            "nvmlDeviceGetPowerUsage", pynvml.NVMLError_NoPermission)),
        (pynvml.NVML_ERROR_GPU_IS_LOST, lambda d: setattr(d, "lost", True)),
    ],
)
def test_error_codes_raise_the_same_classes(
    c_library: Callable[[frozenset[str], int], None], code: int, fake_setup: Callable[[FakeDevice], None],
) -> None:
    c_library(frozenset(), code)
    expected = _raised(pynvml.nvmlDeviceGetPowerUsage, None)
    devices = two_gpus()
    fake_setup(devices[0])
    fake = FakeNvml(devices)
    fake.nvmlInit()
    assert expected is not None and _raised(fake.nvmlDeviceGetPowerUsage, FakeHandle(0)) is expected


def test_event_wait_on_a_set_with_a_lost_gpu_raises_like_the_real_wrapper(
    c_library: Callable[[frozenset[str], int], None],
) -> None:
    c_library(frozenset(), pynvml.NVML_ERROR_GPU_IS_LOST)
    expected = _raised(pynvml.nvmlEventSetWait_v2, None, 0)
    assert expected is pynvml.NVMLError_GpuIsLost
    devices = two_gpus()
    fake = FakeNvml(devices)
    fake.nvmlInit()
    shared, alone = fake.nvmlEventSetCreate(), fake.nvmlEventSetCreate()
    for handle in fake.handles:
        fake.nvmlDeviceRegisterEvents(handle, 0x8, shared)
    fake.nvmlDeviceRegisterEvents(fake.handles[0], 0x8, alone)
    devices[1].lost = True
    fake.xid_queue.append((0, 13))
    assert _raised(fake.nvmlEventSetWait_v2, shared, 0) is expected
    # A set without the lost GPU still delivers the XID of the healthy one.
    assert fake.nvmlEventSetWait_v2(alone, 0).eventData == 13
    assert isinstance(shared, FakeEventSet)


def test_field_values_carry_the_real_struct_members(c_library: Callable[[frozenset[str], int], None]) -> None:
    fake = FakeNvml(two_gpus(), profile=R535)
    fake.nvmlInit()
    result = fake.nvmlDeviceGetFieldValues(FakeHandle(0), [pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, 83])
    members = {name for name, _ in pynvml.c_nvmlFieldValue_t._fields_}
    for value in result:
        assert {"fieldId", "scopeId", "timestamp", "valueType", "nvmlReturn", "value"} <= members
        assert {"fieldId", "scopeId", "timestamp", "valueType", "nvmlReturn", "value"} <= set(vars(value))
    # A field this branch does not know answers per field; the call itself succeeds.
    assert result[0].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert result[1].nvmlReturn == pynvml.NVML_SUCCESS
    # The real call with the same shape: the array comes back, codes are per element.
    c_library(frozenset(), pynvml.NVML_SUCCESS)
    assert len(pynvml.nvmlDeviceGetFieldValues(None, [230, 83])) == 2


def test_profiles_name_symbols_the_real_module_looks_up() -> None:
    source = inspect.getsource(pynvml)
    for symbol in R470.missing_symbols:
        assert f'_nvmlGetFunctionPointer("{symbol}")' in source, symbol


def test_every_fake_function_takes_the_real_functions_arguments() -> None:
    for name, member in inspect.getmembers(FakeNvml, inspect.isfunction):
        if not name.startswith("nvml"):
            continue
        real = [p.name for p in inspect.signature(getattr(pynvml, name)).parameters.values()]
        fake = [p.name for p in inspect.signature(member).parameters.values()][1:]  # less self
        assert len(fake) == len(real), f"{name}: fake {fake}, real {real}"


def test_an_empty_mig_slot_raises_what_the_real_module_raises(
    c_library: Callable[[frozenset[str], int], None],
) -> None:
    c_library(frozenset(), pynvml.NVML_ERROR_NOT_FOUND)
    expected = _raised(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, None, 5)
    assert expected is pynvml.NVMLError_NotFound
    devices = two_gpus()
    devices[0].mig = [FakeMig(gi_id=1, uuid="MIG-1")]
    fake = FakeNvml(devices)
    fake.nvmlInit()
    assert _raised(fake.nvmlDeviceGetMigDeviceHandleByIndex, FakeHandle(0), 5) is expected
    # A MIG parent's process list without root: the class the real module raises for that code.
    c_library(frozenset(), pynvml.NVML_ERROR_NO_PERMISSION)
    denied = _raised(pynvml.nvmlDeviceGetComputeRunningProcesses_v3, None)
    assert _raised(fake.nvmlDeviceGetComputeRunningProcesses_v3, FakeHandle(0)) is denied
