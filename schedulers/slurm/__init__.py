"""Slurm integration: one hook command for Prolog, Epilog, PrologSlurmctld and EpilogSlurmctld.

The node side (slurmd) writes the job map the GPU exporter and the log collector read; the
controller side (slurmctld) registers and finishes the job in the API. A hook never hurts a job:
it exits 0 within its timeout whatever happens, and what it could not deliver waits in a spool.
"""
