"""After a run: its summary, report, merge and the table of runs."""
