"""Example scenario files for the simulated GPU backend (the `jobsight up` demo nodes)."""
