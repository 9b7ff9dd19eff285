"""Attacks a hostile user of a shared cluster can make, each run against the real processes.

Every module here is marked ``security`` (``pytest -m security`` runs the suite alone; ``make test``
runs it with everything else). Where the attack is a user's, the test performs it as an
unprivileged user (``nobody``) and asserts both that it fails and that the legitimate path works.
"""
