"""The project's error hierarchy. Front ends map these to protocol errors in one place each
(``gateway.protocol.errors``)."""

from __future__ import annotations


class KairosError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(KairosError):
    """A configuration file or flag is wrong; the message names the field and what was expected."""


class RuntimeFailure(KairosError):
    """Something a command needs is not there or not working (a port, a pool, an endpoint): not
    a usage error; the command exits 1."""


class ListenError(RuntimeFailure):
    """A port could not be bound (in use, or not allowed)."""


class PoolNotFound(RuntimeFailure):
    """The pool's address file is missing, or its writer has exited."""


class ProfileError(KairosError):
    """A latency profile is missing, or asked for outside its range."""


class InferenceError(KairosError):
    """A request could not be served. ``status`` is the HTTP status it maps to."""

    status = 500


class BadRequest(InferenceError):
    status = 400


class RequestTimeout(InferenceError):
    """The client did not send the whole request in time."""

    status = 408


class ModelNotFound(InferenceError):
    status = 404


class InstanceNotFound(InferenceError):
    """The admin API was asked about an instance the pool does not hold."""

    status = 404


class Conflict(InferenceError):
    """The admin API was asked to add an instance under a name already in use."""

    status = 409


class Unauthorized(InferenceError):
    """The admin API's bearer token is missing or wrong."""

    status = 401


class PayloadTooLarge(InferenceError):
    status = 413


class Overloaded(InferenceError):
    """Admission control refused the query; the client should retry later."""

    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "overloaded") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # the refusal's label in kairos_refusals_total


class Unavailable(InferenceError):
    """The instances tried failed the query (502: the gateway's upstream failed)."""

    status = 502


class NoHealthyInstance(Unavailable):
    """No instance of the model is in rotation now: the service is unavailable for a while
    (503 with Retry-After, as load balancers and Kubernetes clients expect; gRPC UNAVAILABLE)."""

    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceError):
    status = 504


class InternalError(InferenceError):
    """The gateway itself failed on a request: the instance is not blamed."""

    status = 500
