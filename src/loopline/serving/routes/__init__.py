"""The server's HTTP layer: one ``APIRouter`` per protocol, each delegating to the data plane.

* :mod:`.scoring`: ``POST /invocations`` (MLflow scoring protocol)
* :mod:`.v2`: the Open Inference Protocol V2 under ``/v2``
* :mod:`.feedback`: ``POST /feedback``
* :mod:`.ops`: ``/health``, ``/ready``, ``/metrics``, ``/admin/reload``, ``/openapi.json``, ``/docs``

:mod:`.common` holds what they share: reading a bounded body, the JSON response, the request metrics
wrapper and the one handler that turns a :class:`~loopline.errors.ServingError` into its error body.
"""
