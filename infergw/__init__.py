"""infergw: the Python client, the command line and the local stack."""

from infergw.client import Client, InvocationResult, ProblemError

__all__ = ["Client", "InvocationResult", "ProblemError"]
