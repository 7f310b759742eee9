"""One emulated inference instance: profile replay, one query at a time, FIFO.

Transport-free: the HTTP and gRPC front ends (``servers.http``, ``servers.grpc``) parse a
request, ``Instance.check_request`` checks it against the model's inputs (``servers.schema``),
then they call ``Instance.serve(batch)``, which checks the batch against the profile. Like a real
single-stream server the instance serves queries one after another in arrival order, and a
query's service time is drawn from the (model, instance type) latency profile at its batch size
with the instance's own seeded generator. It waits with asynchronous timers and never busy-waits.

The emulated device keeps its own timeline: a query that arrives while the device is busy starts
when the query ahead of it is due to end, not when the process gets round to waking its task.
A real accelerator starts its next batch as soon as it is done, whatever its host's scheduler
does. With a lock handed from task to task, each queued query started 0.26-0.28 ms late on
average (dien at 560 QPS on 2 shared cores: the previous task wakes, answers, and only then
does the next one run).

It also learns how late its process wakes (``WAKE_STEP_S``) and sets its timer that much before
the drawn end, so that an answer leaves at the drawn time at the median, not 0.18 ms after it
(``python -m benchmarks.server_fidelity``). The device timeline is not moved: the next query
still starts at the drawn end.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cache

import numpy as np

from gateway.errors import BadRequest, ModelNotFound, ProfileError
from gateway.precise_timers import clock, sleeper_for  # clock: perf_counter, not whole-ms loop.time()
from gateway.profiles import LatencyProfile
from gateway.profiles.schemas import InputSpec
from gateway.protocol.limits import quote
from gateway.protocol.params import (
    INSTANCE_PARAM,
    INSTANCE_QUEUE_US,
    INSTANCE_TYPE_PARAM,
    OBSERVED_US,
    SERVICE_US,
    ParamValue,
    to_us,
)
from gateway.protocol.translate import BINARY_EXTENSION
from gateway.protocol.v2 import InferRequest
from servers.schema import check_inputs, inputs_for

SERVER_NAME = "kairos-servers"
SERVER_VERSION = "0.1.0"
EXTENSIONS = (BINARY_EXTENSION,)
MODEL_VERSION = "1"
PLATFORM = "kairos-emulated"
# Advertised in model metadata. The inputs are the model's own (``servers.schema``): a request
# must match them, though the emulation reads only the batch size. The one output has one value
# per batch row.
OUTPUT_NAME = "output0"
OUTPUT_DATATYPE = "FP32"
OUTPUT_SHAPE = (-1, 1)
# The wake-up lag is tracked as a median: one step up for each late answer, one down for each
# early one. Why a median: a mean would chase the rare multi-ms stall of a shared core.
# 5 µs steps reach the usual 0.1-0.3 ms lag within the first hundred queries.
WAKE_STEP_S = 5e-6
MAX_WAKE_LEAD_S = 1e-3


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What happened to one query, reported back in the response parameters."""

    batch: int
    queue_ms: float  # waiting behind earlier queries
    service_ms: float  # drawn from the profile (times the latency scale)
    observed_ms: float  # measured: start of service to ready to respond


class FastSampler:
    """``LatencyProfile.sample`` for integer batches, from a precomputed table.

    The profile's sampler costs ~0.1 ms of numpy calls per draw; this one reads one row of
    quantiles per batch size and interpolates in pure Python. Same uniform draw, same inverse
    CDF (linear in batch, then in level), so the same values up to float rounding.
    """

    def __init__(self, profile: LatencyProfile) -> None:
        batches = np.arange(1, profile.max_batch + 1)
        self.levels: list[float] = profile.levels.tolist()
        table = profile.quantile_table(batches, profile.levels)
        self.rows: list[list[float]] = table.tolist()  # rows[batch - 1][level index]
        self._last = len(self.levels) - 2

    def sample(self, batch: int, rng: np.random.Generator) -> float:
        u = rng.random()
        k = min(max(bisect_right(self.levels, u) - 1, 0), self._last)
        lo, hi = self.levels[k], self.levels[k + 1]
        row = self.rows[batch - 1]
        return row[k] + (u - lo) / (hi - lo) * (row[k + 1] - row[k])


@cache
def _sampler(profile: LatencyProfile) -> FastSampler:
    # One table per profile, shared by every instance of that (model, type) in the process.
    return FastSampler(profile)


class Instance:
    """An emulated instance of ``model`` on ``instance_type``.

    ``timers`` picks how it waits out a service time (``gateway.precise_timers.TIMERS``).
    ``latency_scale`` multiplies every drawn service time; 0 serves instantly (for measuring
    the gateway's own overhead). Instance ``index`` of a pool seeded ``seed`` always draws the
    same sequence, whichever process it runs in.
    """

    def __init__(
        self,
        index: int,
        name: str,
        model: str,
        instance_type: str,
        profile: LatencyProfile,
        seed: int = 0,
        latency_scale: float = 1.0,
        timers: str = "timerfd",
        inputs_of: str | None = None,
    ) -> None:
        """``inputs_of``: the model whose inputs it takes, when ``model`` is a variant of it."""
        if latency_scale < 0:
            raise ValueError(f"latency_scale must be >= 0, got {latency_scale}")
        self.index = index
        self.name = name
        self.model = model
        self.inputs: tuple[InputSpec, ...] = inputs_for(inputs_of or model)
        self.instance_type = instance_type
        self.profile = profile
        self.latency_scale = latency_scale
        self._sleep_until = sleeper_for(timers)
        self._rng = np.random.default_rng([seed, index])
        self._sampler = _sampler(profile)
        self._free_at = 0.0  # clock() when the device is done with every query it has accepted
        self.wake_lead_s = 0.0  # how long before a drawn end its timer is set (learned)
        self.served = 0
        # One value per batch row; the model's "prediction" (constant per instance).
        self.scores = self._rng.random(profile.max_batch, dtype=np.float32)

    @property
    def max_batch(self) -> int:
        return self.profile.max_batch

    def response_parameters(self, record: ServiceRecord) -> dict[str, ParamValue]:
        """The parameters of an infer response (both protocols): what happened to the query."""
        return {
            INSTANCE_QUEUE_US: to_us(record.queue_ms),
            SERVICE_US: to_us(record.service_ms),
            OBSERVED_US: to_us(record.observed_ms),
            INSTANCE_PARAM: self.name,
            INSTANCE_TYPE_PARAM: self.instance_type,
        }

    @property
    def busy(self) -> bool:
        return clock() < self._free_at

    def work_left_s(self) -> float:
        """Seconds until the device is done with every query it has accepted."""
        return max(self._free_at - clock(), 0.0)

    def check_model(self, model: str, version: str = "") -> None:
        """ModelNotFound unless ``model`` (and ``version``, if given) is the one served here."""
        if model != self.model:
            raise ModelNotFound(f"unknown model {model!r}: this instance serves {self.model!r}")
        if version not in ("", MODEL_VERSION):
            raise ModelNotFound(
                f"unknown version {version!r} of model {model!r}: available versions: {MODEL_VERSION}"
            )

    def check_request(self, request: InferRequest) -> int:
        """The batch size of a parsed infer request for this model; BadRequest unless its inputs
        match the model's (``servers.schema.check_inputs``) and it asks for no other output than
        ``OUTPUT_NAME``. (``serve`` checks the batch against the profile.)"""
        batch = check_inputs(self.inputs, request.inputs)
        for o in request.outputs:
            if o.name != OUTPUT_NAME:
                raise BadRequest(f"unknown output {quote(o.name)}: this model has {OUTPUT_NAME!r}")
        return batch

    def check_batch(self, batch: int) -> None:
        """BadRequest unless the profile covers ``batch``."""
        try:
            self.profile.check_batch(batch)
        except ProfileError as exc:
            raise BadRequest(str(exc)) from None

    async def serve(self, batch: int) -> ServiceRecord:
        """Queue behind earlier queries, then be busy for a drawn service time. A caller that gives
        up (client deadline, disconnect, shutdown) leaves the device busy to the drawn end, as a
        real server would be: its slot on the timeline is kept."""
        self.check_batch(batch)
        arrived = clock()
        start = max(arrived, self._free_at)
        service_s = 0.0
        if self.latency_scale > 0:
            service_s = self._sampler.sample(batch, self._rng) * self.latency_scale / 1000.0
        end = start + service_s
        self._free_at = end
        if end > arrived:
            await self._sleep_until(end - self.wake_lead_s)
            done = clock()
            lead = self.wake_lead_s + (WAKE_STEP_S if done > end else -WAKE_STEP_S)
            self.wake_lead_s = min(max(lead, 0.0), MAX_WAKE_LEAD_S)
        else:
            done = clock()
        self.served += 1
        return ServiceRecord(
            batch=batch,
            queue_ms=(start - arrived) * 1000.0,
            service_ms=service_s * 1000.0,
            observed_ms=(done - start) * 1000.0,
        )
