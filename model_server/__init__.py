"""A SageMaker-compatible model container (``GET /ping``, ``POST /invocations``) and the
local endpoint host that answers the SageMaker runtime wire API in front of it."""
