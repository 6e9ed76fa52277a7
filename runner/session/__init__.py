"""The run session in the parent process: launch, follow, probe, recover, stop; and its views."""
