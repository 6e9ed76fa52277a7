"""The machine: detection (NVML, host RAM under the cgroup limit), GPU facts, hardware specs,
and earlier probes' calibration."""
