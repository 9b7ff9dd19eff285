"""Tests of the roof: the agent, jobsight up and the supervisor."""
