"""Hardware detection and the GPU catalog.

NVML is faked at the pynvml boundary (its functions monkeypatched, its real error classes
raised); everything above it — visibility, links, notes, the catalog, cgroup reading on fake
cgroup trees — is the real code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import pynvml
import pytest
from rich.console import Console

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.gpu_catalog import CATALOG, lookup, match_nvml_name
from llmwizard.autotune.machine.hardware import GiB, detect, from_spec, read_cgroup
from llmwizard.wizard.detect_view import render_detect
from tests.conftest import run_cli

MiB = 1024**2


# ----------------------------------------------------------------------------- a fake NVML

@dataclass
class FakeGPU:
    name: str
    total_mib: int
    free_mib: int | None = None
    cc: tuple[int, int] = (8, 9)
    uuid: str = ""
    bus: str = ""
    nvlinks: list[str] = field(default_factory=list)    # remote bus ids, or "switch", one per link
    migs: list[FakeGPU] | None = None                     # MIG mode on when a list
    fail: set[str] = field(default_factory=set)          # NVML functions that fail on this device


def _error(code: int = pynvml.NVML_ERROR_NOT_SUPPORTED) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    """Answers the pynvml calls detection makes, from a list of FakeGPUs."""

    def __init__(self, gpus: list[FakeGPU], nvlink_pairs: set[frozenset[int]] = frozenset(), p2p_read: bool = True,
                 p2p_query: bool = True) -> None:
        self.gpus = gpus
        for i, gpu in enumerate(gpus):
            gpu.uuid = gpu.uuid or f"GPU-{i:x}{i:x}{i:x}{i:x}0000-1111-2222-3333-444455556666"
            gpu.bus = gpu.bus or f"00000000:{0x17 + i:02X}:00.0"
        self.nvlink_pairs = nvlink_pairs
        self.p2p_read = p2p_read
        self.p2p_query = p2p_query
        self.shutdowns = 0

    def _check(self, gpu: FakeGPU, fn: str) -> None:
        if fn in gpu.fail:
            raise _error(pynvml.NVML_ERROR_UNKNOWN)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        def memory(h):
            self._check(h, "memory")
            free = h.total_mib if h.free_mib is None else h.free_mib
            return SimpleNamespace(total=h.total_mib * MiB, free=free * MiB, used=(h.total_mib - free) * MiB)

        def handle(index):
            if index >= len(self.gpus):
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            self._check(self.gpus[index], "handle")
            return self.gpus[index]

        def cc(h):
            self._check(h, "cc")
            return h.cc

        def p2p(a, b, index):
            if not self.p2p_query:
                raise _error()
            pair = frozenset((self.gpus.index(a), self.gpus.index(b)))
            if index == 2:  # NVML_P2P_CAPS_INDEX_NVLINK
                return 0 if pair in self.nvlink_pairs else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
            return 0 if self.p2p_read else pynvml.NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED

        def link_state(h, link):
            if not h.nvlinks:
                raise _error()
            if link >= len(h.nvlinks):
                return 0
            return 1

        def remote_type(h, link):
            return 0x02 if h.nvlinks[link] == "switch" else 0x00

        def remote_pci(h, link):
            if h.nvlinks[link] == "switch":
                raise _error()
            return SimpleNamespace(busId=h.nvlinks[link].encode())

        def mig_mode(h):
            if h.migs is None:
                raise _error()
            return [1, 1]

        def mig_handle(h, slot):
            if slot >= len(h.migs):
                raise _error(pynvml.NVML_ERROR_NOT_FOUND)
            return h.migs[slot]

        def shutdown():
            self.shutdowns += 1

        fakes = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": shutdown,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetName": lambda h: h.name,
            "nvmlDeviceGetUUID": lambda h: h.uuid,
            "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=h.bus.encode()),
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetCudaComputeCapability": cc,
            "nvmlDeviceGetP2PStatus": p2p,
            "nvmlDeviceGetNvLinkState": link_state,
            "nvmlDeviceGetNvLinkRemoteDeviceType": remote_type,
            "nvmlDeviceGetNvLinkRemotePciInfo": remote_pci,
            "nvmlDeviceGetMigMode": mig_mode,
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
            "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
        }
        for name, fake in fakes.items():
            assert hasattr(pynvml, name), name  # fake only functions the real module has
            monkeypatch.setattr(pynvml, name, fake)
        return self


@pytest.fixture()
def no_cgroup(tmp_path: Path) -> dict:
    """detect() arguments that point the cgroup reader at an empty tree and clear the environment."""
    return {"cgroup_root": tmp_path / "no-cgroup", "self_cgroup": tmp_path / "no-self", "environ": {},
            "runs_dir": tmp_path}


def rtx(**kw) -> FakeGPU:
    return FakeGPU("NVIDIA GeForce RTX 4090", 24564, **kw)


# ----------------------------------------------------------------------------- NVML

def test_no_driver_gives_a_cpu_profile_with_one_note(monkeypatch, no_cgroup):
    def init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    profile = detect(**no_cgroup)
    assert profile.device == "cpu" and profile.gpus == [] and profile.interconnect == "none"
    assert len(profile.notes) == 1
    assert "Driver Not Loaded" in profile.notes[0] and "planning for the CPU" in profile.notes[0]
    assert profile.host_ram_total > 0 and profile.cpu_cores >= 1 and profile.disk_free


def test_one_gpu(monkeypatch, no_cgroup):
    fake = FakeNvml([rtx(free_mib=23800)]).install(monkeypatch)
    profile = detect(**no_cgroup)
    (gpu,) = profile.gpus
    assert gpu.name == "NVIDIA GeForce RTX 4090" and gpu.index == 0 and gpu.nvml_index == 0
    assert gpu.total_memory == 24564 * MiB and gpu.free_memory == 23800 * MiB
    assert gpu.compute_capability == (8, 9)
    assert gpu.uuid == fake.gpus[0].uuid and gpu.pci_bus_id == "0000:17:00.0"
    assert gpu.bf16_tflops == 165.2 and gpu.memory_bandwidth == 1008 and gpu.catalog_name == "RTX4090"
    assert profile.interconnect == "none" and profile.links == {} and profile.notes == []
    assert fake.shutdowns == 1
    json.dumps(profile.to_dict())


def test_four_gpus_one_busy_plans_on_free_memory(monkeypatch, no_cgroup):
    FakeNvml([rtx(), rtx(), rtx(free_mib=4096), rtx()]).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.gpus_per_node == 4
    assert profile.smallest_gpu.index == 2 and profile.smallest_gpu.free_memory == 4 * GiB
    (note,) = profile.notes
    assert "GPU 2" in note and "in use by other processes" in note and "4.0 GiB free" in note
    assert profile.interconnect == "pcie"
    assert set(profile.links) == {"0-1", "0-2", "0-3", "1-2", "1-3", "2-3"}
    assert set(profile.links.values()) == {"pcie-p2p"}


def test_pcie_without_p2p_is_noted(monkeypatch, no_cgroup):
    FakeNvml([rtx(), rtx()], p2p_read=False).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.links == {"0-1": "pcie"} and profile.interconnect == "pcie"
    assert any("no peer-to-peer" in note for note in profile.notes)


def test_mixed_models_plan_for_the_smallest(monkeypatch, no_cgroup):
    FakeNvml([FakeGPU("NVIDIA GeForce RTX 3090", 24576, cc=(8, 6)), rtx(),
              FakeGPU("NVIDIA GeForce RTX 5090", 32607, cc=(12, 0))]).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert [g.catalog_name for g in profile.gpus] == ["RTX3090", "RTX4090", "RTX5090"]
    assert [g.bf16_tflops for g in profile.gpus] == [71.0, 165.2, 209.5]
    assert profile.smallest_gpu.index == 1  # 24564 MiB free is less than the 3090's 24576
    (note,) = [n for n in profile.notes if n.startswith("Mixed GPU models")]
    assert "smallest, GPU 1 (NVIDIA GeForce RTX 4090" in note


def test_nvlink_between_every_pair(monkeypatch, no_cgroup):
    pairs = {frozenset((a, b)) for a in range(4) for b in range(4) if a != b}
    FakeNvml([FakeGPU("NVIDIA A100-SXM4-80GB", 81920, cc=(8, 0)) for _ in range(4)], pairs).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.interconnect == "nvlink" and set(profile.links.values()) == {"nvlink"}
    assert all(g.catalog_name == "A100-80GB" and g.bf16_tflops == 312 for g in profile.gpus)
    assert profile.notes == []


def test_nvlink_on_some_pairs_is_pcie_overall(monkeypatch, no_cgroup):
    FakeNvml([rtx() for _ in range(4)], {frozenset((0, 1)), frozenset((2, 3))}).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.interconnect == "pcie"
    assert profile.links["0-1"] == profile.links["2-3"] == "nvlink"
    assert profile.links["0-2"] == "pcie-p2p"
    assert any("NVLink joins only some GPU pairs (0-1, 2-3)" in note for note in profile.notes)


def test_nvlink_found_by_walking_links_when_p2p_status_is_unsupported(monkeypatch, no_cgroup):
    gpus = [FakeGPU("Tesla V100-SXM2-16GB", 16384, cc=(7, 0)) for _ in range(3)]
    gpus[0].nvlinks = ["00000000:18:00.0", "00000000:18:00.0"]  # two links to GPU 1
    gpus[1].nvlinks = ["00000000:17:00.0"]
    FakeNvml(gpus, p2p_query=False).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.links == {"0-1": "nvlink", "0-2": "pcie", "1-2": "pcie"}
    assert profile.interconnect == "pcie"


def test_nvswitch_links_every_pair(monkeypatch, no_cgroup):
    gpus = [FakeGPU("NVIDIA H100 80GB HBM3", 81559, cc=(9, 0), nvlinks=["switch"] * 18) for _ in range(8)]
    FakeNvml(gpus, p2p_query=False).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert profile.interconnect == "nvlink" and len(profile.links) == 28


def test_cuda_visible_devices_by_index_keeps_that_order(monkeypatch, no_cgroup):
    FakeNvml([rtx(), rtx(), rtx(), rtx()]).install(monkeypatch)
    profile = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": "2, 0"}))
    assert [(g.index, g.nvml_index) for g in profile.gpus] == [(0, 2), (1, 0)]
    assert list(profile.links) == ["0-1"] and profile.notes == []


def test_cuda_visible_devices_by_uuid_prefix(monkeypatch, no_cgroup):
    fake = FakeNvml([rtx(), rtx(), rtx()]).install(monkeypatch)
    prefix = fake.gpus[1].uuid[:12]
    profile = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": prefix}))
    assert [g.nvml_index for g in profile.gpus] == [1] and profile.gpus[0].uuid == fake.gpus[1].uuid


def test_cuda_visible_devices_stops_at_the_first_bad_entry(monkeypatch, no_cgroup):
    FakeNvml([rtx(), rtx()]).install(monkeypatch)
    profile = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": "1,7,0"}))
    assert [g.nvml_index for g in profile.gpus] == [1]
    assert any("'7' matches no GPU" in note for note in profile.notes)


def test_ambiguous_uuid_prefix_or_empty_list_leaves_the_cpu(monkeypatch, no_cgroup):
    FakeNvml([rtx(), rtx()]).install(monkeypatch)
    ambiguous = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": "GPU-"}))
    assert ambiguous.device == "cpu" and "planning for the CPU" in ambiguous.notes[0]
    empty = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": ""}))
    assert empty.device == "cpu" and empty.notes == ["CUDA_VISIBLE_DEVICES is empty, so CUDA shows no GPU: "
                                                     "planning for the CPU."]


def test_mig_instance_by_uuid(monkeypatch, no_cgroup):
    slices = [FakeGPU("NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968, uuid="MIG-aaaa1111-2222"),
              FakeGPU("NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968, free_mib=19000, uuid="MIG-bbbb1111-2222")]
    FakeNvml([FakeGPU("NVIDIA A100-SXM4-40GB", 40960, cc=(8, 0), migs=slices)]).install(monkeypatch)
    profile = detect(**dict(no_cgroup, environ={"CUDA_VISIBLE_DEVICES": "MIG-bbbb"}))
    (gpu,) = profile.gpus
    assert gpu.uuid == "MIG-bbbb1111-2222" and gpu.free_memory == 19000 * MiB and gpu.compute_capability == (8, 0)
    # Without CUDA_VISIBLE_DEVICES a MIG-mode GPU is planned as its first instance, and says so.
    whole = detect(**no_cgroup)
    assert [g.uuid for g in whole.gpus] == ["MIG-aaaa1111-2222"]
    assert any("MIG mode on" in note for note in whole.notes)


def test_an_nvml_error_on_one_device_is_noted_not_raised(monkeypatch, no_cgroup):
    FakeNvml([rtx(fail={"memory"}), rtx(fail={"cc"}), rtx(fail={"handle"}),
              FakeGPU("Mystery GPU", 8192, fail={"cc"})]).install(monkeypatch)
    profile = detect(**no_cgroup)
    assert [g.nvml_index for g in profile.gpus] == [1, 3]
    assert profile.gpus[0].compute_capability == (8, 9)  # from the catalog
    assert profile.gpus[1].compute_capability == (0, 0) and profile.gpus[1].bf16_tflops is None
    text = "\n".join(profile.notes)
    assert "GPU 0 (NVIDIA GeForce RTX 4090): NVML cannot read its memory" in text
    assert "GPU 2: NVML cannot open it" in text and "planning without bf16" in text


def test_device_count_failure_is_a_cpu_profile(monkeypatch, no_cgroup):
    FakeNvml([]).install(monkeypatch)

    def count():
        raise _error(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", count)
    profile = detect(**no_cgroup)
    assert profile.device == "cpu" and len(profile.notes) == 1 and "count" in profile.notes[0]


# ----------------------------------------------------------------------------- cgroup and host

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture()
def fixed_ram(monkeypatch):
    memory = SimpleNamespace(total=64 * GiB, available=48 * GiB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    return memory


def test_cgroup_v2_limit_caps_host_ram(tmp_path, monkeypatch, fixed_ram):
    root = tmp_path / "cg"
    _write(root, {
        "cgroup.controllers": "cpu memory\n",
        "kubepods/pod1/memory.max": "max\n",                  # the leaf is unlimited...
        "kubepods/memory.max": str(8 * GiB),                  # ...but its parent is not
        "kubepods/pod1/memory.current": str(5 * GiB),
        "kubepods/pod1/memory.stat": f"anon 100\ninactive_file {GiB}\nactive_file 5\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",
    })
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/kubepods/pod1\n")
    limits = read_cgroup(root, self_cgroup)
    assert (limits.version, limits.memory_limit, limits.memory_used, limits.cpu_limit) == (2, 8 * GiB, 4 * GiB, 1.5)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: (_ for _ in ()).throw(_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    profile = detect(tmp_path, cgroup_root=root, self_cgroup=self_cgroup, environ={})
    assert profile.host_ram_total == 8 * GiB and profile.host_ram_available == 4 * GiB
    assert profile.cgroup_memory_limit == 8 * GiB and profile.cpu_cores == 1
    assert any("cgroup v2" in note for note in profile.notes)


def test_cgroup_v2_unlimited_inside_its_own_namespace(tmp_path, fixed_ram):
    root = tmp_path / "cg"
    _write(root, {"cgroup.controllers": "memory\n", "memory.max": "max\n", "cpu.max": "max 100000\n"})
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/\n")
    assert read_cgroup(root, self_cgroup).memory_limit is None and read_cgroup(root, self_cgroup).cpu_limit is None


def test_cgroup_v1_limit_and_quota(tmp_path, monkeypatch, fixed_ram):
    root = tmp_path / "cg"
    _write(root, {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",   # v1's "unlimited"
        "memory/docker/abc/memory.limit_in_bytes": str(3 * GiB),
        "memory/docker/abc/memory.usage_in_bytes": str(2 * GiB),
        "memory/docker/abc/memory.stat": f"inactive_file 5\ntotal_inactive_file {GiB // 2}\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("9:name=systemd:/docker/abc\n4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    limits = read_cgroup(root, self_cgroup)
    facts = (limits.version, limits.memory_limit, limits.memory_used, limits.cpu_limit)
    assert facts == (1, 3 * GiB, 3 * GiB // 2, 2.0)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: (_ for _ in ()).throw(_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    profile = detect(tmp_path, cgroup_root=root, self_cgroup=self_cgroup, environ={})
    assert profile.host_ram_total == 3 * GiB and profile.host_ram_available == 3 * GiB // 2


def test_cgroup_v1_container_mount_is_its_own_cgroup(tmp_path, fixed_ram):
    # Docker without a cgroup namespace: /proc/self/cgroup names /docker/<id>, but the mount
    # inside the container already is that cgroup.
    root = tmp_path / "cg"
    _write(root, {"memory/memory.limit_in_bytes": str(2 * GiB), "memory/memory.usage_in_bytes": str(GiB)})
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("4:memory:/docker/0123abc\n")
    limits = read_cgroup(root, self_cgroup)
    assert limits.version == 1 and limits.memory_limit == 2 * GiB and limits.memory_used == GiB
    assert limits.cpu_limit is None


def test_no_cgroup_tree_means_no_limit(tmp_path):
    assert read_cgroup(tmp_path / "missing", tmp_path / "missing-self").memory_limit is None


# ----------------------------------------------------------------------------- specs and the catalog

@pytest.mark.parametrize("key", list(CATALOG))
def test_every_catalog_entry_parses(key):
    model = CATALOG[key]
    for spec in (f"2x{key}", f"2 x {key.lower()}", f" 2X{key.replace('-', ' ')} "):
        profile = from_spec(spec)
        assert profile.source == "spec" and profile.gpus_per_node == 2 and profile.nodes == 1
        assert {g.catalog_name for g in profile.gpus} == {key}
        gpu = profile.gpus[0]
        assert gpu.total_memory == gpu.free_memory == model.memory_mib * MiB
        assert gpu.compute_capability == model.compute_capability and gpu.bf16_tflops == model.bf16_tflops
        assert profile.interconnect == model.interconnect and set(profile.links.values()) == {model.interconnect}
        assert profile.host_ram_total == model.host_ram_per_gpu_gib * 2 * GiB
        assert 0 < profile.host_ram_available < profile.host_ram_total
    # The catalog's NVML name finds the same entry, so detected GPUs get the same figures.
    assert match_nvml_name(model.name, model.memory_bytes) == model


def test_catalog_figures_are_sane():
    for model in CATALOG.values():
        assert 10 < model.bf16_tflops < 5000 and 100 < model.bandwidth_gbs < 10000
        assert model.interconnect in ("nvlink", "pcie")
    # No bf16 before compute capability 8.0: those entries carry fp16 figures (documented).
    assert {k for k, m in CATALOG.items() if m.compute_capability < (8, 0)} == {"T4", "V100-16GB", "V100-32GB"}


@pytest.mark.parametrize(("name", "key"), [
    ("4090", "RTX4090"), ("RTX 4090", "RTX4090"), ("GeForce RTX 4090", "RTX4090"), ("nvidia rtx4090", "RTX4090"),
    ("3090", "RTX3090"), ("rtx-5090", "RTX5090"), ("H100", "H100-80GB"), ("h100 sxm", "H100-80GB"),
    ("H100-PCIe", "H100-PCIE"), ("A100", "A100-40GB"), ("a100 80gb", "A100-80GB"), ("V100", "V100-16GB"),
    ("Tesla T4", "T4"), ("l40s", "L40S"), ("h200", "H200"), ("b200", "B200"), ("A10G", "A10G"),
])
def test_aliases(name, key):
    assert lookup(name) is CATALOG[key]


@pytest.mark.parametrize(("spec", "fragment"), [
    ("A100", "A100-40GB"), ("V100", "V100-16GB"), ("4xH100", "H100-PCIe"),
])
def test_ambiguous_names_say_what_they_were_read_as(spec, fragment):
    assert any(fragment in note for note in from_spec(spec).notes)


@pytest.mark.parametrize(("name", "memory_mib", "key"), [
    ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"), ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"), ("NVIDIA H100 PCIe", 81559, "H100-PCIE"),
    ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"), ("Tesla V100-SXM2-32GB", 32768, "V100-32GB"),
    ("Tesla V100-PCIE-16GB", 16384, "V100-16GB"), ("NVIDIA L4", 23034, "L4"), ("NVIDIA L40S", 46068, "L40S"),
    ("NVIDIA GH200 480GB", 97871, None), ("NVIDIA RTX A6000", 49140, None), ("NVIDIA A10", 23028, None),
])
def test_nvml_names_match_catalog_entries(name, memory_mib, key):
    found = match_nvml_name(name, memory_mib * MiB)
    assert (found.key if found else None) == key


def test_nodes_and_counts():
    assert from_spec("2x8xH100").nodes == 2 and from_spec("2x8xH100").gpus_per_node == 8
    assert from_spec("2 × 8 × H100-80GB", nodes=2).nodes == 2
    assert from_spec("8xH100", nodes=4).nodes == 4
    assert from_spec("H200").gpus_per_node == 1
    assert from_spec("4x4090").gpus[0].catalog_name == "RTX4090"


def test_generic_size_and_ram_override():
    profile = from_spec("2x24GB,ram=256GB")
    assert profile.gpus[0].total_memory == 24 * GiB and profile.gpus[0].compute_capability == (8, 0)
    assert profile.host_ram_total == 256 * GiB and profile.interconnect == "pcie"
    assert any("only the memory is known" in note for note in profile.notes)
    assert from_spec("1x22.5GB").gpus[0].total_memory == int(22.5 * GiB)
    assert from_spec("4xL4", host_ram_gib=100).host_ram_total == 100 * GiB


def test_cpu_spec_uses_this_host():
    profile = from_spec(" CPU ")
    assert profile.device == "cpu" and profile.host_ram_total > 0 and profile.cpu_cores >= 1
    assert from_spec("cpu,ram=32GB").host_ram_total == 32 * GiB


@pytest.mark.parametrize(("spec", "nodes", "needle"), [
    ("4xRTX9090", 1, "Unknown GPU model 'RTX9090'"),
    ("", 1, "empty"),
    ("0xH100", 1, "asks for no GPU"),
    ("64xH100", 1, "8x8xH100"),
    ("2x8xH100", 3, "says 2 nodes but --nodes says 3"),
    ("4xRTX4090,fast", 1, "'fast'"),
    ("4xRTX4090,ram=0GB", 1, "not a size"),
    ("4xRTX4090", 0, "--nodes 0"),
    ("A10", 1, "Unknown GPU model 'A10'"),
])
def test_bad_specs_raise_user_errors(spec, nodes, needle):
    with pytest.raises(UserError) as caught:
        from_spec(spec, nodes=nodes)
    assert needle in str(caught.value) and caught.value.title == "Hardware"


@pytest.mark.parametrize(("spec", "host_ram", "named", "fix"), [
    ("4x0GB", None, ["'0GB'", "'4x0GB'", ": 0 "], "4x24GB"),
    ("2x-8GB", None, ["'-8GB'", "'2x-8GB'", ": -8 "], "2x24GB"),
    ("4xnanGB", None, ["'nanGB'", "'4xnanGB'", ": nan "], "4x24GB"),
    ("1xinfGB", None, ["'infGB'", "'1xinfGB'", ": inf "], "1x24GB"),
    ("1x0.0001GB", None, ["'0.0001GB'", "1 MiB"], "1x24GB"),
    ("0xRTX4090", None, ["'0xRTX4090'", "0 GPUs per node"], "1 or more"),
    ("0x8xH100", None, ["'0x8xH100'", "0 nodes"], "1 or more"),
    ("4xRTX4090,ram=-64GB", None, ["'ram=-64GB'", "'4xRTX4090,ram=-64GB'", ": -64 "], "ram=256GB"),
    ("4xRTX4090,ram=nanGB", None, ["'ram=nanGB'", ": nan "], "ram=256GB"),
    ("cpu,ram=-1GB", None, ["'ram=-1GB'", "'cpu,ram=-1GB'"], "ram=256GB"),
    ("4xL4", -3.0, ["--host-ram -3", "'4xL4'"], "--host-ram 256"),
    ("4xL4", float("nan"), ["--host-ram nan", "'4xL4'"], "--host-ram 256"),
])
def test_zero_negative_and_nan_sizes_are_refused_by_name(spec, host_ram, named, fix):
    with pytest.raises(UserError) as caught:
        from_spec(spec, host_ram_gib=host_ram)
    assert caught.value.title == "Hardware"
    for part in named:
        assert part in caught.value.message
    assert caught.value.fix and fix in caught.value.fix


@pytest.mark.parametrize("args", [["--gpus", "4x0GB"], ["--gpus", "0xRTX4090"], ["--gpus", "1xL4,ram=-8GB"],
                                  ["--gpus", "2xnanGB"], ["--gpus", "1xL4", "--host-ram", "-1"]])
def test_the_cli_refuses_bad_sizes_with_exit_code_2(args):
    result = run_cli("plan", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "Fix" in result.stderr or "is not allowed; use" in result.stderr  # a panel, or argparse's line
    assert args[-1] in result.stderr


def test_unknown_model_lists_the_known_names():
    with pytest.raises(UserError) as caught:
        from_spec("2xTPUv5")
    for key in CATALOG:
        assert key in caught.value.fix


# ----------------------------------------------------------------------------- the detect view and imports

def _render(profile) -> str:
    console = Console(record=True, width=140)
    console.print(render_detect(profile))
    return console.export_text()


def test_render_detect_for_linked_gpus(monkeypatch, no_cgroup):
    FakeNvml([rtx(free_mib=8000 if i == 3 else None) for i in range(4)],
             {frozenset((0, 1)), frozenset((2, 3))}).install(monkeypatch)
    text = _render(detect(**no_cgroup))
    assert "NVIDIA GeForce RTX 4090" in text and "7.8 GiB / 24.0 GiB" in text and "8.9" in text
    assert "165.2" in text and "NV" in text and "P2P" in text and "GPU3" in text
    assert "cgroup cap" in text and "CPU cores" in text and "disk free" in text
    assert "NVLink joins only some" in text


def test_render_detect_for_the_cpu_and_a_spec():
    assert "No GPU" in _render(from_spec("cpu"))
    text = _render(from_spec("2x8xT4"))
    assert "fp16, no bf16" in text and "PCIe" in text and "2 nodes" in text and "7.5" in text
    assert "0-7  8x Tesla T4" in text and "cgroup cap" not in text


def test_importing_hardware_stays_light():
    code = ("import sys, llmwizard.autotune.machine.hardware, llmwizard.autotune.machine.gpu_catalog\n"
            "print([m for m in ('torch', 'textual', 'transformers', 'pynvml', 'psutil') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
