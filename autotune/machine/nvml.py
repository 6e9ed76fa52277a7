"""GPUs through NVML: the devices CUDA will show this process, their memory, and the links between them.

NVML ignores CUDA_VISIBLE_DEVICES, so its entries (indices, GPU-/MIG- UUID prefixes) are mapped to
NVML devices here, in CUDA's order. pynvml is imported inside `read_nvml`: importing this module
costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmwizard.autotune.machine.gpu_catalog import match_nvml_name
from llmwizard.autotune.machine.hardware_types import GPU, GiB

# Memory another process holds beyond this is worth a note (an idle GPU shows a few hundred MiB
# used by the driver's reservation and contexts).
BUSY_BYTES = 1 * GiB
# nvml.h nvmlGpuP2PCapsIndex_t: READ = 0, NVLINK = 2. (pynvml 13.x defines READ as a tuple by a
# stray comma, so the numbers are written here.)
P2P_READ, P2P_NVLINK = 0, 2
P2P_STATUS_OK = 0
NVLINK_DEVICE_TYPE_SWITCH = 0x02

@dataclass
class _Device:
    nvml_index: int
    handle: Any
    name: str
    uuid: str | None
    bus: str | None
    parent: Any = None                      # the physical GPU's handle for a MIG instance

    @property
    def is_mig(self) -> bool:
        return self.parent is not None


def read_nvml(environ: Mapping[str, str]) -> tuple[list[GPU], dict[str, str], list[str]]:
    """The GPUs CUDA will show this process, the link between each pair, and notes."""
    try:
        import pynvml
    except ImportError:
        return [], {}, ["nvidia-ml-py (pynvml) is not installed, so no GPU can be seen: planning for the CPU."]
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...; OSError from ctypes
        return [], {}, [f"No NVIDIA driver found (NVML: {exc}): planning for the CPU."]
    try:
        return _read_devices(pynvml, environ)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _call(pynvml: Any, name: str, *args: Any) -> Any:
    """One NVML query that may fail on this device or driver (NotSupported, GPU lost, a function
    an old driver lacks): None instead of an exception."""
    try:
        return getattr(pynvml, name)(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _bus(pci: Any) -> str | None:
    """PCI bus id in one spelling: NVML writes "00000000:1A:00.0", sysfs "0000:1a:00.0"."""
    raw = _text(getattr(pci, "busId", None)) if pci is not None else None
    match = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])", raw or "")
    if not match:
        return raw
    domain, bus, dev, fn = match.groups()
    return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn}"


def _read_devices(pynvml: Any, environ: Mapping[str, str]) -> tuple[list[GPU], dict[str, str], list[str]]:
    notes: list[str] = []
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:
        return [], {}, [f"NVML could not count the GPUs ({exc}): planning for the CPU."]
    devices: list[_Device] = []
    for index in range(count):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            notes.append(f"GPU {index}: NVML cannot open it ({exc}); left out of the plan.")
            continue
        devices.append(_Device(index, handle, _text(_call(pynvml, "nvmlDeviceGetName", handle)) or f"GPU {index}",
                               _text(_call(pynvml, "nvmlDeviceGetUUID", handle)),
                               _bus(_call(pynvml, "nvmlDeviceGetPciInfo", handle))))
    selected = _visible(pynvml, devices, environ, notes)

    gpus: list[GPU] = []
    kept: list[_Device] = []
    for position, dev in enumerate(selected):
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(dev.handle)
            total, free = int(memory.total), int(memory.free)
        except Exception as exc:
            notes.append(f"GPU {dev.nvml_index} ({dev.name}): NVML cannot read its memory ({exc}); "
                         "left out of the plan.")
            continue
        model = match_nvml_name(dev.name, total)
        cc = _call(pynvml, "nvmlDeviceGetCudaComputeCapability", dev.parent if dev.parent is not None else dev.handle)
        if cc is None:
            cc = model.compute_capability if model else (0, 0)
            notes.append(f"GPU {dev.nvml_index} ({dev.name}): NVML gave no compute capability; "
                         + (f"using the catalog's {cc[0]}.{cc[1]}." if model else "planning without bf16."))
        gpus.append(GPU(index=position, name=dev.name, total_memory=total, free_memory=free,
                        compute_capability=(int(cc[0]), int(cc[1])), uuid=dev.uuid, pci_bus_id=dev.bus,
                        bf16_tflops=model.bf16_tflops if model else None,
                        memory_bandwidth=model.bandwidth_gbs if model else None,
                        nvml_index=dev.nvml_index, catalog_name=model.key if model else None))
        kept.append(dev)
        if total - free > max(BUSY_BYTES, total // 20):
            notes.append(f"GPU {dev.nvml_index} ({dev.name}): {(total - free) / GiB:.1f} of {total / GiB:.1f} GiB "
                         f"already in use by other processes; planning on the {free / GiB:.1f} GiB free.")
    if not gpus:
        if not notes:
            notes.append("NVML found no GPU: planning for the CPU.")
        elif not any("planning for the CPU" in note for note in notes):
            notes.insert(0, "No usable GPU: planning for the CPU.")
        return [], {}, notes
    if len({g.name for g in gpus}) > 1:
        smallest = min(gpus, key=lambda g: g.free_memory)
        notes.append(f"Mixed GPU models ({', '.join(sorted({g.name for g in gpus}))}): every process is planned "
                     f"for the smallest, GPU {smallest.index} ({smallest.name}, "
                     f"{smallest.free_memory / GiB:.1f} GiB free).")
    links = {f"{gpus[i].index}-{gpus[j].index}": _pair_link(pynvml, kept[i], kept[j], devices)
             for i in range(len(kept)) for j in range(i + 1, len(kept))}
    return gpus, links, notes


def _visible(pynvml: Any, devices: list[_Device], environ: Mapping[str, str], notes: list[str]) -> list[_Device]:
    """The devices CUDA shows, in CUDA's order. CUDA reads CUDA_VISIBLE_DEVICES as a comma list of
    indices, GPU-<uuid> or MIG-<uuid> prefixes, and stops at the first entry it cannot match."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        chosen = devices
    elif not value.strip():
        notes.insert(0, "CUDA_VISIBLE_DEVICES is empty, so CUDA shows no GPU: planning for the CPU.")
        return []
    else:
        mig_cache: dict[int, list[_Device]] = {}
        chosen = []
        for entry in (part.strip() for part in value.split(",")):
            found = _resolve(pynvml, entry, devices, mig_cache)
            if found is None or any(found.handle is c.handle for c in chosen):
                why = "matches no GPU" if found is None else "repeats a GPU"
                notes.append(f"CUDA_VISIBLE_DEVICES entry '{entry}' {why}: CUDA ignores it and every entry after it.")
                break
            chosen.append(found)
        indexed = any(re.fullmatch(r"\d+", e.strip()) for e in value.split(","))
        if indexed and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({d.name for d in devices}) > 1:
            notes.append("CUDA_VISIBLE_DEVICES uses indices and CUDA orders unlike GPUs fastest first; they were "
                         "read in NVML (PCI bus) order. Set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA agrees.")
    chosen = _whole_or_mig(pynvml, chosen, notes)
    if any(d.is_mig for d in chosen) and len(chosen) > 1:
        notes.append("CUDA runs a process on one MIG instance at most: planning for the first visible device only.")
        chosen = chosen[:1]
    return chosen


def _resolve(pynvml: Any, entry: str, devices: list[_Device], mig_cache: dict[int, list[_Device]]) -> _Device | None:
    upper = entry.upper()
    if re.fullmatch(r"\d+", entry):
        return next((d for d in devices if d.nvml_index == int(entry)), None)
    if upper.startswith("GPU-"):
        pool = devices
    elif upper.startswith("MIG-"):
        pool = [m for d in devices for m in mig_cache.setdefault(d.nvml_index, _mig_instances(pynvml, d))]
    else:
        return None
    matches = [d for d in pool if d.uuid and d.uuid.upper().startswith(upper)]
    return matches[0] if len(matches) == 1 else None  # an ambiguous prefix matches nothing, as in CUDA


def _whole_or_mig(pynvml: Any, devices: list[_Device], notes: list[str]) -> list[_Device]:
    """A whole GPU with MIG mode on is not a CUDA device: its MIG instances are. Use the first."""
    result = []
    for dev in devices:
        mode = None if dev.is_mig else _call(pynvml, "nvmlDeviceGetMigMode", dev.handle)
        if not mode or int(mode[0]) != 1:
            result.append(dev)
            continue
        instances = _mig_instances(pynvml, dev)
        if not instances:
            notes.append(f"GPU {dev.nvml_index} ({dev.name}) has MIG mode on but no MIG instance; left out.")
            continue
        notes.append(f"GPU {dev.nvml_index} ({dev.name}) has MIG mode on: planning for its MIG instance "
                     f"{instances[0].uuid}. Set CUDA_VISIBLE_DEVICES=MIG-<uuid> to pick another.")
        result.append(instances[0])
    return result


def _mig_instances(pynvml: Any, dev: _Device) -> list[_Device]:
    mode = _call(pynvml, "nvmlDeviceGetMigMode", dev.handle)
    if not mode or int(mode[0]) != 1:
        return []
    instances = []
    for slot in range(_call(pynvml, "nvmlDeviceGetMaxMigDeviceCount", dev.handle) or 0):
        handle = _call(pynvml, "nvmlDeviceGetMigDeviceHandleByIndex", dev.handle, slot)
        if handle is None:
            continue  # an empty slot answers NotFound
        name = _text(_call(pynvml, "nvmlDeviceGetName", handle)) or f"{dev.name} MIG"
        instances.append(_Device(dev.nvml_index, handle, name, _text(_call(pynvml, "nvmlDeviceGetUUID", handle)),
                                 dev.bus, parent=dev.handle))
    return instances


def _pair_link(pynvml: Any, a: _Device, b: _Device, devices: list[_Device]) -> str:
    """"nvlink" when NVML reports NVLink P2P between the pair (direct or through NVSwitch),
    "pcie-p2p" when PCIe peer-to-peer works, else "pcie" (NCCL then copies through host memory)."""
    if a.is_mig or b.is_mig:
        return "pcie"
    nvlink = _p2p(pynvml, a, b, P2P_NVLINK)
    if nvlink is None:  # the query is not supported: walk the links instead
        peers_a, peers_b = _nvlink_peers(pynvml, a), _nvlink_peers(pynvml, b)
        nvlink = (b.bus in peers_a or a.bus in peers_b or ("nvswitch" in peers_a and "nvswitch" in peers_b))
    if nvlink:
        return "nvlink"
    return "pcie-p2p" if _p2p(pynvml, a, b, P2P_READ) else "pcie"


def _p2p(pynvml: Any, a: _Device, b: _Device, index: int) -> bool | None:
    status = _call(pynvml, "nvmlDeviceGetP2PStatus", a.handle, b.handle, index)
    return None if status is None else int(status) == P2P_STATUS_OK


def _nvlink_peers(pynvml: Any, dev: _Device) -> set[str]:
    """PCI bus ids at the far end of this GPU's active NVLinks ("nvswitch" for a switch)."""
    peers: set[str] = set()
    for link in range(int(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18))):
        if _call(pynvml, "nvmlDeviceGetNvLinkState", dev.handle, link) != 1:  # NVML_FEATURE_ENABLED
            continue
        if _call(pynvml, "nvmlDeviceGetNvLinkRemoteDeviceType", dev.handle, link) == NVLINK_DEVICE_TYPE_SWITCH:
            peers.add("nvswitch")
            continue
        remote = _bus(_call(pynvml, "nvmlDeviceGetNvLinkRemotePciInfo", dev.handle, link))
        if remote:
            peers.add(remote)
    return peers


def link_notes(gpus: list[GPU], links: dict[str, str]) -> list[str]:
    kinds = set(links.values())
    if len(gpus) < 2 or kinds == {"nvlink"}:
        return []
    notes = []
    if "nvlink" in kinds:
        pairs = ", ".join(pair for pair, kind in links.items() if kind == "nvlink")
        notes.append(f"NVLink joins only some GPU pairs ({pairs}): collectives run at PCIe speed.")
    if "pcie" in kinds:
        notes.append("Some GPU pairs have no peer-to-peer access: NCCL copies through host memory, so "
                     "gradient all-reduce is slow and sharded strategies cost more.")
    return notes
