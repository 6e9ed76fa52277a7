"""`llmwizard detect` for people: the GPUs, how they are linked, and the host, in one panel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from llmwizard.autotune.machine.hardware import GPU, HardwareProfile

GiB = 1024**3
_LINK_LABEL = {"nvlink": "NVLink", "pcie-p2p": "PCIe P2P", "pcie": "PCIe (no P2P)"}
_LINK_CELL = {"nvlink": "NV", "pcie-p2p": "P2P", "pcie": "PCIe"}


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GiB:.1f} GiB"


def _tflops(gpu: GPU) -> str:
    if gpu.bf16_tflops is None:
        return "?"
    # The catalog carries the fp16 tensor figure for parts without bf16 (compute capability < 8.0).
    return f"{gpu.bf16_tflops:g}" + (" (fp16, no bf16)" if gpu.compute_capability < (8, 0) else "")


def gpu_table(profile: HardwareProfile) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    for column, justify in (("GPU", "left"), ("memory free / total", "right"), ("compute cap.", "center"),
                            ("bf16 TFLOP/s", "right"), ("bandwidth", "right"), ("PCI bus", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "GPU")  # type: ignore[arg-type]
    gpus = profile.gpus
    alike = profile.source == "spec" and len(gpus) > 1
    for gpu in gpus[:1] if alike else gpus:
        busy = gpu.total_memory - gpu.free_memory > max(GiB, gpu.total_memory // 20)
        memory = Text(f"{_gib(gpu.free_memory)} / {_gib(gpu.total_memory)}", style="yellow" if busy else "")
        label = f"0-{len(gpus) - 1}  {len(gpus)}x {gpu.name}" if alike else f"{gpu.index}  {gpu.name}"
        table.add_row(label, memory,
                      f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}", _tflops(gpu),
                      "?" if gpu.memory_bandwidth is None else f"{gpu.memory_bandwidth:g} GB/s",
                      gpu.pci_bus_id or "-")
    return table


def interconnect_view(profile: HardwareProfile) -> RenderableType:
    """One line when every pair is linked alike; a pair matrix (like `nvidia-smi topo -m`) otherwise."""
    kinds = set(profile.links.values())
    if profile.gpus_per_node < 2:
        return Text("interconnect: none (one GPU per node)" if profile.gpus else "interconnect: none (no GPU)")
    nodes = f"; {profile.nodes} nodes linked by the network" if profile.nodes > 1 else ""
    if len(kinds) <= 1:
        label = _LINK_LABEL.get(next(iter(kinds)), profile.interconnect) if kinds else profile.interconnect
        return Text(f"interconnect: {label} between every GPU pair{nodes}")
    matrix = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    matrix.add_column("")
    for gpu in profile.gpus:
        matrix.add_column(f"GPU{gpu.index}", justify="center")
    for a in profile.gpus:
        cells = []
        for b in profile.gpus:
            key = f"{min(a.index, b.index)}-{max(a.index, b.index)}"
            cells.append("X" if a.index == b.index else _LINK_CELL.get(profile.links.get(key, ""), "?"))
        matrix.add_row(f"GPU{a.index}", *cells)
    legend = Text(f"interconnect: {profile.interconnect} (NV = NVLink, P2P = PCIe peer-to-peer, "
                  f"PCIe = through host memory){nodes}")
    return Group(legend, matrix)


def host_table(profile: HardwareProfile) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_row("[bold]host RAM[/]",
                  f"{_gib(profile.host_ram_available)} available of {_gib(profile.host_ram_total)}")
    limit = profile.cgroup_memory_limit
    if profile.source == "detected":
        facts.add_row("[bold]cgroup cap[/]", "none" if limit is None else _gib(limit))
    facts.add_row("[bold]CPU cores[/]", str(profile.cpu_cores))
    if profile.disk_free is not None:
        facts.add_row("[bold]disk free[/]", f"{_gib(profile.disk_free)} where runs go")
    if profile.nodes > 1:
        facts.add_row("[bold]nodes[/]", f"{profile.nodes} (figures above are per node)")
    return facts


def render_detect(profile: HardwareProfile) -> RenderableType:
    """The panel `llmwizard detect` prints: GPUs, interconnect, host, and every note."""
    parts: list[RenderableType] = []
    if profile.gpus:
        parts += [gpu_table(profile), Text(""), interconnect_view(profile), Text("")]
    else:
        parts += [Text("No GPU: plans run on the CPU.", style="bold"), Text("")]
    parts.append(host_table(profile))
    if profile.notes:
        parts.append(Text(""))
        parts += [Text(f"! {note}", style="yellow") for note in profile.notes]
    title = "detected hardware" if profile.source == "detected" else f"planned hardware: {profile.spec}"
    return Panel(Group(*parts), title=title, border_style="blue", expand=False)
