"""The validated, frozen config model: Istio's resources with Istio's field names.

Each Istio message is one pydantic model; the YAML key is the Istio (camelCase) name and the Python
attribute its snake_case twin. Unset fields stay ``None`` so that "not given" and "given as the
default" remain different things: defaults are applied when the model is compiled to runtime tables
(``meshlib.config.compile``), where Istio applies them too.

Validation follows Istio's own (``pkg/config/validation``) where meshlib can observe the difference:
unknown fields, wrong types, durations, RE2 regexes, weights, percentages, status codes, header-name
case, and the one-of rules of Istio's messages.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from meshlib.config.logformat import check_format

# --------------------------------------------------------------------------- scalar types

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: object) -> float:
    """Parse a duration as Istio and Go write them (``7s``, ``0.5s``, ``100ms``, ``1m30s``).

    Returns seconds."""
    if not isinstance(value, str):
        raise ValueError(f"must be a duration string such as '7s' or '100ms', not {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("must be a duration such as '7s' or '100ms', not an empty string")
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: write a number and a unit (h, m, s, ms, us, ns), "
                "e.g. '7s', '0.5s', '100ms', '1m'"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


def _positive_ms(seconds: float) -> float:
    """Istio's ValidateDuration: at least 1ms, and whole milliseconds."""
    if seconds < 0.001:
        raise ValueError("must be at least 1ms")
    if abs(round(seconds * 1000) - seconds * 1000) > 1e-6:
        raise ValueError("only durations to millisecond precision are supported")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive_ms)]


def _check_percent(value: float) -> float:
    if not 0.0 <= value <= 100.0:
        raise ValueError("must be between 0 and 100")
    return value


@functools.lru_cache(maxsize=1024)
def re2_compile(pattern: str) -> Any:
    """``pattern`` compiled by RE2, quietly (RE2 logs its errors to stderr by default) and once:
    validation, matching and rewriting share the compiled pattern."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options=options)


def _check_re2(pattern: str) -> str:
    """Istio and Envoy use RE2: reject what RE2 rejects (lookaround, backreferences, …)."""
    try:
        re2_compile(pattern)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid RE2 regex {pattern!r}: {detail}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_check_re2)]
Labels = dict[str, str]

#: RFC 9110 token characters: what an HTTP header name is made of (and all httpx can send).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+")


def _check_header_name(name: str) -> str:
    """A header name the data plane sends or reads: an HTTP token (``end-user``), not empty."""
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(
            f"header name {name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
        )
    return name


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


class Model(BaseModel):
    """Base of every config message: strict types, unknown fields rejected, frozen once built."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
        regex_engine="python-re",
    )


# --------------------------------------------------------------------------- shared messages


class Percent(Model):
    """``percentage: {value: 50}``: a double between 0 and 100."""

    value: Annotated[float, AfterValidator(_check_percent)] = 0.0


class PortSelector(Model):
    number: int = Field(ge=1, le=65535)


def _check_match_regex(pattern: str) -> str:
    """RE2, except ``*``: not a regex, but pilot's "present" in ``withoutHeaders`` (istio#20629).
    Where else ``*`` is invalid, ``meshlib.config.validation`` says so."""
    return pattern if pattern == "*" else _check_re2(pattern)


class StringMatch(Model):
    """One of ``exact``, ``prefix``, ``regex`` (RE2, full match). Empty (``{}``) means "present".
    Which empty strings are allowed depends on the field (``meshlib.config.validation``)."""

    exact: str | None = None
    prefix: str | None = None
    regex: Annotated[str, AfterValidator(_check_match_regex)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        given = [n for n in ("exact", "prefix", "regex") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of exact, prefix, regex (got {', '.join(given)})")
        return self


class Destination(Model):
    host: str = Field(min_length=1)
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(Model):
    set: dict[str, str] | None = None
    add: dict[str, str] | None = None
    remove: list[str] | None = None


class Headers(Model):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


# --------------------------------------------------------------------------- VirtualService


#: Header name → match. Names are matched in any case, as HTTP and Envoy match them.
HeaderMatches = dict[str, StringMatch] | None


class HTTPMatchRequest(Model):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: HeaderMatches = None
    port: int | None = Field(default=None, ge=1, le=65535)
    source_labels: Labels | None = None
    gateways: list[str] | None = None
    query_params: dict[str, StringMatch] | None = None
    ignore_uri_case: bool | None = None
    without_headers: HeaderMatches = None
    source_namespace: str | None = None
    stat_prefix: str | None = None


class HTTPRouteDestination(Model):
    destination: Destination
    weight: int = Field(default=0, ge=0)
    headers: Headers | None = None


_RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


#: The statuses Go's ``net/http`` names (``http.StatusText``): the numbers Istio takes in retryOn.
HTTP_STATUS_CODES = frozenset(
    {100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308, *range(400, 419)}
    | {421, 422, 423, 424, 425, 426, 428, 429, 431, 451, *range(500, 509), 510, 511}
)


def _check_retry_on(value: str) -> str:
    """Istio's rule: a comma-separated list, no spaces, of Envoy retry conditions and HTTP
    statuses; an empty string means unset."""
    if not value:
        return value
    for item in value.split(","):
        if item in _RETRY_ON:
            continue
        if re.fullmatch(r"[+-]?[0-9]+", item) and int(item) in HTTP_STATUS_CODES:
            continue
        if item.strip() != item:
            raise ValueError(f"{item!r}: write retryOn's conditions without spaces ('5xx,503')")
        known = ", ".join(sorted(_RETRY_ON))
        raise ValueError(
            f"{item!r} is not a retry condition (use an HTTP status or one of {known})"
        )
    return value


class HTTPRetry(Model):
    attempts: int = Field(default=0, ge=0)
    per_try_timeout: PositiveDuration | None = None
    retry_on: Annotated[str, AfterValidator(_check_retry_on)] | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: PositiveDuration | None = None


class Delay(Model):
    fixed_delay: PositiveDuration | None = None
    exponential_delay: PositiveDuration | None = None
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> Delay:
        if self.fixed_delay is not None and self.exponential_delay is not None:
            raise ValueError("set only one of fixedDelay, exponentialDelay")
        return self


GRPC_STATUS_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def _check_grpc_status(value: str) -> str:
    if value not in GRPC_STATUS_CODES:
        raise ValueError(
            f"{value!r} is not a gRPC status name (use e.g. UNAVAILABLE, not its number)"
        )
    return value


class Abort(Model):
    http_status: int | None = Field(default=None, ge=200, le=600)
    grpc_status: Annotated[str, AfterValidator(_check_grpc_status)] | None = None
    http2_error: str | None = None
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> Abort:
        given = [
            n for n in ("http_status", "grpc_status", "http2_error") if getattr(self, n) is not None
        ]
        if len(given) > 1:
            raise ValueError("set only one of httpStatus, grpcStatus, http2Error")
        return self


class HTTPFaultInjection(Model):
    delay: Delay | None = None
    abort: Abort | None = None

    @model_validator(mode="after")
    def _some(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault must have a delay, an abort, or both")
        return self


class RegexRewrite(Model):
    match: Regex
    rewrite: str


class HTTPRewrite(Model):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HTTPRewrite:
        if self.uri is not None and self.uri_regex_rewrite is not None:
            raise ValueError("set only one of uri, uriRegexRewrite")
        return self


class HTTPRedirect(Model):
    uri: str | None = None
    authority: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: int | None = None
    prefix_rewrite: str | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("set only one of port, derivePort")
        return self


class HTTPBody(Model):
    string: str | None = None
    bytes: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HTTPBody:
        if self.string is not None and self.bytes is not None:
            raise ValueError("set only one of string, bytes")
        return self


class HTTPDirectResponse(Model):
    status: int = Field(ge=200, le=600)
    body: HTTPBody | None = None


class HTTPMirrorPolicy(Model):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(Model):
    allow_origins: list[StringMatch] | None = None
    allow_origin: list[str] | None = None
    allow_methods: list[str] | None = None
    allow_headers: list[str] | None = None
    expose_headers: list[str] | None = None
    max_age: PositiveDuration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class Delegate(Model):
    name: str
    namespace: str | None = None


class HTTPRoute(Model):
    """One HTTP rule. Which of route, redirect, directResponse and delegate it may combine
    depends on the VirtualService (a delegate's rules differ): ``meshlib.config.validation``."""

    name: str | None = None
    match: list[HTTPMatchRequest] | None = None
    route: list[HTTPRouteDestination] | None = None
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: PositiveDuration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)
    mirror_percentage: Percent | None = None
    mirrors: list[HTTPMirrorPolicy] | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    @field_validator("route")
    @classmethod
    def _weighted(
        cls, route: list[HTTPRouteDestination] | None
    ) -> list[HTTPRouteDestination] | None:
        if route and len(route) > 1 and sum(d.weight for d in route) == 0:
            raise ValueError("total destination weight = 0: give the destinations weights")
        return route


class L4Match(Model):
    destination_subnets: list[str] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    source_subnet: str | None = None
    source_labels: Labels | None = None
    gateways: list[str] | None = None
    source_namespace: str | None = None


class TLSMatch(Model):
    sni_hosts: list[str]
    destination_subnets: list[str] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    source_labels: Labels | None = None
    gateways: list[str] | None = None
    source_namespace: str | None = None


class RouteDestination(Model):
    destination: Destination
    weight: int = Field(default=0, ge=0)


class TCPRoute(Model):
    match: list[L4Match] | None = None
    route: list[RouteDestination] | None = None


class TLSRoute(Model):
    match: list[TLSMatch]
    route: list[RouteDestination] | None = None


class VirtualService(Model):
    hosts: list[str] | None = None
    gateways: list[str] | None = None
    http: list[HTTPRoute] | None = None
    tls: list[TLSRoute] | None = None
    tcp: list[TCPRoute] | None = None
    export_to: list[str] | None = None


# --------------------------------------------------------------------------- DestinationRule


class HTTPCookieAttribute(Model):
    name: str
    value: str | None = None


class HTTPCookie(Model):
    name: str
    path: str | None = None
    ttl: Duration | None = None
    attributes: list[HTTPCookieAttribute] | None = None


class RingHash(Model):
    minimum_ring_size: int | None = Field(default=None, ge=0)


class Maglev(Model):
    table_size: int | None = Field(default=None, ge=0)


class ConsistentHashLB(Model):
    http_header_name: HeaderName | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_of(self) -> ConsistentHashLB:
        """At most one hash key (with none, Envoy picks endpoints at random)."""
        keys = [
            n
            for n in (
                "http_header_name",
                "http_cookie",
                "use_source_ip",
                "http_query_parameter_name",
            )
            if getattr(self, n) is not None
        ]
        if len(keys) > 1:
            raise ValueError(
                "set only one hash key: httpHeaderName, httpCookie, useSourceIp or "
                "httpQueryParameterName"
            )
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("set only one of ringHash, maglev")
        return self


class LocalityDistribute(Model):
    from_: str = Field(alias="from")
    to: dict[str, int]


class LocalityFailover(Model):
    from_: str = Field(alias="from")
    to: str


class LocalityLoadBalancerSetting(Model):
    distribute: list[LocalityDistribute] | None = None
    failover: list[LocalityFailover] | None = None
    failover_priority: list[str] | None = None
    enabled: bool | None = None


class ZoneAwareLoadBalancerSetting(Model):
    """Envoy's zone-aware routing: region-, zone- and subzone-level routing are automatic;
    ``failover`` orders regions only."""

    enabled: bool | None = None
    failover: list[LocalityFailover] | None = None
    failover_priority: list[str] | None = None
    min_cluster_size: int | None = Field(default=None, ge=1)


def _check_aggression(value: float) -> float:
    if value <= 0:
        raise ValueError("aggression should be greater than 0 (1.0 is linear)")
    return value


class WarmupConfiguration(Model):
    duration: PositiveDuration
    minimum_percent: Annotated[float, AfterValidator(_check_percent)] | None = None
    aggression: Annotated[float, AfterValidator(_check_aggression)] | None = None


SimpleLB = Literal[
    "UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"
]


class LoadBalancerSettings(Model):
    simple: SimpleLB | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    zone_aware_lb_setting: ZoneAwareLoadBalancerSetting | None = None
    warmup_duration_secs: PositiveDuration | None = None
    warmup: WarmupConfiguration | None = None

    @model_validator(mode="after")
    def _one_of(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("set only one of simple, consistentHash")
        return self


class TcpKeepalive(Model):
    probes: int | None = Field(default=None, ge=0)
    time: PositiveDuration | None = None
    interval: PositiveDuration | None = None


class ConnectionKeepalive(Model):
    """``http2KeepAlive``: HTTP/2 PINGs every ``interval``, the connection closed when one is
    not answered within ``timeout``. Istio requires both."""

    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None


class TCPSettings(Model):
    max_connections: int | None = Field(default=None, ge=0)
    connect_timeout: PositiveDuration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: PositiveDuration | None = None
    idle_timeout: Duration | None = None


class HTTPSettings(Model):
    http1_max_pending_requests: int | None = Field(default=None, ge=0)
    http2_max_requests: int | None = Field(default=None, ge=0)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: PositiveDuration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = Field(default=None, ge=0)
    http2_keep_alive: ConnectionKeepalive | None = Field(default=None, alias="http2KeepAlive")


class ConnectionPoolSettings(Model):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(Model):
    consecutive_errors: int | None = Field(default=None, ge=0)
    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0)
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, alias="consecutive5xxErrors")
    interval: PositiveDuration | None = None
    base_ejection_time: PositiveDuration | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)
    outlier_detection_http_error_codes: list[Annotated[int, Field(ge=100, le=599)]] | None = None


class ClientTLSSettings(Model):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] | None = None
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None


class TunnelSettings(Model):
    protocol: Literal["CONNECT", "POST"] | None = None
    target_host: str
    target_port: int = Field(ge=1, le=65535)


class ProxyProtocol(Model):
    version: Literal["V1", "V2"] | None = None


class RetryBudget(Model):
    """Istio's ``percent`` is a bare number (a ``DoubleValue``): ``percent: 25``."""

    percent: Annotated[float, AfterValidator(_check_percent)] | None = None
    min_retry_concurrency: int | None = Field(default=None, ge=0)
    budget_interval: Duration | None = None


class PortTrafficPolicy(Model):
    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(Model):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] | None = None
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None


class Subset(Model):
    name: str = Field(min_length=1)
    labels: Labels | None = None
    traffic_policy: TrafficPolicy | None = None


class WorkloadSelector(Model):
    """A DestinationRule's ``workloadSelector`` (Istio's ``type.v1beta1.WorkloadSelector``)."""

    match_labels: Labels | None = None


class DestinationRule(Model):
    host: str = Field(min_length=1)
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] | None = None
    export_to: list[str] | None = None
    workload_selector: WorkloadSelector | None = None


# --------------------------------------------------------------------------- ServiceEntry


class ServicePort(Model):
    number: int = Field(ge=1, le=65535)
    protocol: str | None = None
    name: str
    target_port: int | None = Field(default=None, ge=1, le=65535)


class WorkloadEntry(Model):
    address: str | None = None
    ports: dict[str, int] | None = None
    labels: Labels | None = None
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0)
    service_account: str | None = None


class ServiceEntryWorkloadSelector(Model):
    """A ServiceEntry's ``workloadSelector`` (Istio's ``networking.v1.WorkloadSelector``):
    ``labels``, not ``matchLabels``."""

    labels: Labels | None = None


class ServiceEntry(Model):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] | None = None
    ports: list[ServicePort] | None = None
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] | None = None
    endpoints: list[WorkloadEntry] | None = None
    workload_selector: ServiceEntryWorkloadSelector | None = None

    export_to: list[str] | None = None
    subject_alt_names: list[str] | None = None


# --------------------------------------------------------------------------- meshlib Service


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {value!r} must be host:port, e.g. 127.0.0.1:9080")
    return value


Address = Annotated[str, AfterValidator(_check_address)]


class Endpoint(Model):
    address: Address
    labels: Labels | None = None
    weight: int = Field(default=1, ge=1)


class FileRegistrySource(Model):
    """A YAML file of endpoints (``{service: [{address, labels, weight}]}``), re-read on change."""

    path: str = Field(min_length=1)
    refresh_interval: PositiveDuration | None = None


class Registry(Model):
    static: dict[str, list[Endpoint]] | None = None
    file: FileRegistrySource | None = None


class OutboundTrafficPolicy(Model):
    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"


BreakerOutcome = Literal["5xx", "gateway-error", "connect-failure", "timeout", "reset"]


class BreakerPolicy(Model):
    """A Hystrix-style breaker for calls to one destination (host + subset)."""

    enabled: bool | None = None
    failure_threshold: int | None = Field(default=None, ge=1)
    reset_timeout: Duration | None = None
    success_threshold: int | None = Field(default=None, ge=1)
    count: list[BreakerOutcome] | None = None


class CircuitBreakers(BreakerPolicy):
    """``spec.circuitBreakers``: defaults for every destination, overrides per destination
    (keyed by host — short name or FQDN — or ``host|subset``), and optional shared state."""

    redis: str | None = None
    destinations: dict[str, BreakerPolicy] | None = None


Propagation = Literal["tracecontext", "baggage", "b3", "b3multi"]


class TracingSettings(Model):
    """``spec.telemetry.tracing``: spans for inbound requests and outbound attempts."""

    enabled: bool | None = None
    sampling: Annotated[float, AfterValidator(_check_percent)] | None = None
    propagation: list[Propagation] | None = None
    #: a JSON-lines file the spans are written to (one span a line), relative to the config file
    file: str | None = Field(default=None, min_length=1)
    #: how many finished spans the mesh keeps for ``GET /_mesh/traces`` (0: none)
    recent_spans: int | None = Field(default=None, ge=0, le=100_000)


class MetricsSettings(Model):
    """``spec.telemetry.metrics``: Istio-standard metrics, and where Prometheus scrapes them."""

    enabled: bool | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str | None = None
    path: str | None = None


class AccessLogSettings(Model):
    """``spec.telemetry.accessLog``: one line per inbound and outbound request."""

    enabled: bool | None = None
    format: Annotated[str, AfterValidator(check_format)] | None = None  # json, text, or %OPERATOR%s
    logger: str | None = None


class TelemetrySettings(Model):
    tracing: TracingSettings | None = None
    metrics: MetricsSettings | None = None
    access_log: AccessLogSettings | None = None


class AppTimeout(Model):
    """``spec.appTimeouts.<service>``: the timeout the app's own code sets on its calls to a
    service, and how many tries it makes. meshlib does not apply it (the app does); ``meshctl
    validate`` checks injected delays against it."""

    timeout: PositiveDuration
    attempts: int = Field(default=1, ge=1)


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


def _check_trust_domain(value: str) -> str:
    """SPIFFE's trust domain name: lowercase letters, digits, dots, dashes and underscores."""
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a trust domain: lowercase letters, digits, '.', '-' and '_' "
            "(e.g. cluster.local)"
        )
    return value


class IdentitySettings(Model):
    """``spec.identity``: the workload's certificate. Either ``ca``, a CA directory the workload
    issues its own certificates from (``meshctl ca init``), or ``certificate``, ``privateKey`` and
    ``caCertificates``, files another process keeps renewed. Relative paths are relative to the
    config file."""

    trust_domain: Annotated[str, AfterValidator(_check_trust_domain)] | None = None
    ca: str | None = Field(default=None, min_length=1)
    certificate_lifetime: PositiveDuration | None = None
    certificate: str | None = Field(default=None, min_length=1)
    private_key: str | None = Field(default=None, min_length=1)
    ca_certificates: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> IdentitySettings:
        files = [self.certificate, self.private_key, self.ca_certificates]
        if self.ca is not None and any(f is not None for f in files):
            raise ValueError("set either ca or certificate, privateKey and caCertificates")
        if self.ca is None and not all(f is not None for f in files):
            raise ValueError(
                "name the certificate's source: ca (a CA directory) or all of certificate, "
                "privateKey and caCertificates"
            )
        if self.certificate_lifetime is not None and self.ca is None:
            raise ValueError("certificateLifetime applies to certificates issued from ca")
        return self


class InboundSettings(Model):
    """``spec.inbound``: how the inbound side treats callers.

    ``trustHeadersFrom``: whose context headers (``x-request-id``, the trace headers,
    ``propagateHeaders``, ``x-envoy-*`` and ``x-mesh-*``) are taken: ``mesh``, callers with a
    verified mesh identity (the default when the service has an identity); ``any``, every caller
    (an edge behind a proxy that sets them, and the default without an identity).
    ``numTrustedProxies``: proxies in front of the service whose ``X-Forwarded-For`` entries are
    believed (``remote.ip``; Istio's ``gatewayTopology.numTrustedProxies``, default 0).
    ``pathNormalization``: Istio's mesh config ``pathNormalization.normalization`` (default
    ``BASE``), applied when an AuthorizationPolicy or RequestAuthentication applies."""

    trust_headers_from: Literal["mesh", "any"] | None = None
    num_trusted_proxies: int | None = Field(default=None, ge=0, le=64)
    path_normalization: (
        Literal["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"] | None
    ) = None


def _check_admin_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("the admin token must be at least 16 characters long")
    return value


class AdminSettings(Model):
    """``spec.admin``: the ``/_mesh/...`` endpoints. ``token``: a bearer token that opens them
    (``$MESHLIB_ADMIN_TOKEN`` also works) besides a verified mesh identity."""

    token: Annotated[str, AfterValidator(_check_admin_token)] | None = None


def _check_store(value: str) -> str:
    from meshlib.store.url import StoreURL  # noqa: PLC0415 - the store package builds on the model

    StoreURL.parse(value)
    return value


class Service(Model):
    """meshlib's own document: who this service is and where the others are."""

    version: str | None = None
    #: the fleet's store: ``etcd://host:port[,...]/prefix`` or ``file://path`` (meshlib.store)
    store: Annotated[str, AfterValidator(_check_store)] | None = None
    service_account: str | None = Field(default=None, min_length=1)
    identity: IdentitySettings | None = None
    root_namespace: str | None = Field(default=None, min_length=1)
    labels: Labels | None = None
    propagate_headers: list[HeaderName] | None = None
    registry: Registry | None = None
    include: list[str] | None = None
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    circuit_breakers: CircuitBreakers | None = None
    telemetry: TelemetrySettings | None = None
    app_timeouts: dict[str, AppTimeout] | None = None
    inbound: InboundSettings | None = None
    admin: AdminSettings | None = None


# --------------------------------------------------------------------------- documents


class Metadata(BaseModel):
    """Kubernetes object metadata; fields meshlib has no use for (uid, …) are let through."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: Labels | None = None
    annotations: dict[str, str] | None = None


#: The model of each kind's ``spec``. Istio's security kinds (security.istio.io) are modelled in
#: ``meshlib.config.security``, which builds on this module and adds them here when imported
#: (``meshlib.config.load`` imports it).
SPEC_MODELS: dict[str, type[Model]] = {
    "VirtualService": VirtualService,
    "DestinationRule": DestinationRule,
    "ServiceEntry": ServiceEntry,
    "Service": Service,
}
