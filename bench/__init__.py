"""The ntkflow benchmark harness: `python -m bench --help`."""
