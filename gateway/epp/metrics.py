"""The picker's own series, beside the gateway's (``gateway.metrics``) in the same registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway.metrics import PREFIX, GatewayMetrics

# How an ext_proc stream ended: an inference picked and answered by the instance, refused (429,
# 503, 4xx), answered by Envoy itself (a local reply: the instance failed), abandoned before
# the answer (the client or Envoy went away), or another V2 call sent to a ready instance.
OUTCOMES = ("answered", "refused", "local_reply", "abandoned", "other_call")


class EppMetrics:
    def __init__(self, metrics: GatewayMetrics) -> None:
        r = metrics.registry
        self.open = Gauge(f"{PREFIX}_epp_streams_open", "ext_proc streams open (one per request in Envoy)", registry=r)
        streams = Counter(
            f"{PREFIX}_epp_streams", "ext_proc streams ended, by outcome", ["outcome"], registry=r
        )
        self.ended = {outcome: streams.labels(outcome) for outcome in OUTCOMES}
