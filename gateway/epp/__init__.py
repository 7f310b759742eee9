"""The endpoint picker mode (``kairos-gateway --mode epp``): the dispatcher behind Envoy's
external processing filter, as the Gateway API Inference Extension defines it. Envoy carries
the payload; the picker only decides where each request goes."""
