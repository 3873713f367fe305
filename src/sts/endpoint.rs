//! The endpoint policy: which STS endpoints a SessionToken may name (`--allowed-sts-endpoints`),
//! and the URL parsing behind it. An endpoint receives a signed request and the MFA code.

use super::MAX_ENDPOINT_LEN;
use super::error::truncate;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Host {
    /// Lowercased DNS labels.
    Dns(Vec<String>),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(labels) => f.write_str(&labels.join(".")),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed endpoint: scheme, host and port only (no user info, path, query or fragment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    scheme: Scheme,
    host: Host,
    /// `None` for the scheme's default port (an explicit default port is normalised away).
    port: Option<u16>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The pieces of a URL, split but not interpreted. Shared by endpoints and patterns.
pub(super) struct RawUrl<'a> {
    scheme: Scheme,
    /// Host as written (brackets kept for IPv6), not yet lowercased.
    host: &'a str,
    port: Option<&'a str>,
}

pub(super) fn split_url(s: &str) -> Result<RawUrl<'_>, String> {
    if s.is_empty() {
        return Err("it is empty".to_owned());
    }
    if s.len() > MAX_ENDPOINT_LEN {
        return Err(format!("it is longer than {MAX_ENDPOINT_LEN} characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it contains spaces, control or non-ASCII characters".to_owned());
    }
    if s.contains('\\') {
        return Err("it contains a backslash".to_owned());
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| "it is not an absolute URL (scheme://host)".to_owned())?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        return Err("its scheme is neither https nor http".to_owned());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err("it has a query or fragment; give only scheme://host[:port]".to_owned());
    }
    if !(tail.is_empty() || tail == "/") {
        return Err("it has a path; give only scheme://host[:port]".to_owned());
    }
    if authority.contains('@') {
        return Err(
            "it contains user information ('@'); give only scheme://host[:port]".to_owned(),
        );
    }
    if authority.is_empty() {
        return Err("it has no host".to_owned());
    }
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or_else(|| "it has an unterminated IPv6 address".to_owned())?;
        let (host, after) = authority.split_at(close.saturating_add(1));
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err("it has characters after the IPv6 address".to_owned()),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err("it has more than one ':' in the host part".to_owned());
                }
                (h, Some(p))
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".to_owned());
    }
    Ok(RawUrl { scheme, host, port })
}

pub(super) fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("its port is not a number from 1 to 65535".to_owned());
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("its port is not a number from 1 to 65535".to_owned()),
    }
}

pub(super) fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// An AWS region name as it appears in STS host names: `us-east-1`, `us-gov-west-1`,
/// `cn-north-1`, `eusc-de-east-1`, `us-isob-east-1`.
pub(super) fn is_region_label(l: &str) -> bool {
    let parts: Vec<&str> = l.split('-').collect();
    if parts.len() < 3 {
        return false;
    }
    let (Some((first, rest)), Some(last)) = (parts.split_first(), parts.last()) else {
        return false;
    };
    let middle = rest.split_last().map(|(_, m)| m).unwrap_or_default();
    (2..=5).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Interprets a host. `labels_ok` decides which labels are acceptable (patterns allow `*` and
/// `{region}` in addition to DNS labels).
pub(super) fn parse_host(host: &str, labels_ok: impl Fn(&str) -> bool) -> Result<Host, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        return inner
            .parse::<Ipv6Addr>()
            .map(|a| Host::Ip(IpAddr::V6(a)))
            .map_err(|_| "its IPv6 address is not valid".to_owned());
    }
    let host = host.to_ascii_lowercase();
    if host.ends_with('.') {
        return Err("its host ends with a dot".to_owned());
    }
    if host.len() > 253 {
        return Err("its host is longer than 253 characters".to_owned());
    }
    let labels: Vec<String> = host.split('.').map(str::to_owned).collect();
    // A last label starting with a digit is an IPv4 address or something a resolver might
    // read as one (`2130706433`, `0x7f.1`, `127.1`): only strict dotted quads are accepted.
    if labels
        .last()
        .is_some_and(|l| l.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    {
        return match host.parse::<Ipv4Addr>() {
            Ok(a) => Ok(Host::Ip(IpAddr::V4(a))),
            Err(_) => Err(
                "its host looks like a numeric address but is not a valid IPv4 address".to_owned(),
            ),
        };
    }
    if let Some(bad) = labels.iter().find(|l| !labels_ok(l)) {
        return Err(if bad.is_empty() {
            "its host has an empty label ('..')".to_owned()
        } else {
            format!(
                "its host label {:?} is not a valid DNS label (letters, digits, '-')",
                truncate(bad, 64)
            )
        });
    }
    Ok(Host::Dns(labels))
}

pub(super) fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let raw = split_url(s)?;
    let host = parse_host(raw.host, is_dns_label)?;
    let port = match raw.port {
        None => None,
        Some(p) => {
            let p = parse_port(p)?;
            (p != raw.scheme.default_port()).then_some(p)
        }
    };
    Ok(Endpoint {
        scheme: raw.scheme,
        host,
        port,
    })
}

/// Parses an endpoint URL strictly and returns its canonical form `scheme://host[:port]`
/// (lowercase scheme and host, default port dropped, no trailing slash). Refuses user info,
/// paths other than `/`, queries, fragments, non-ASCII, trailing dots and ambiguous numeric hosts.
/// The message says why, without repeating the input.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    parse_endpoint(endpoint)
        .map(|e| e.to_string())
        .map_err(|why| format!("endpoint is not valid: {why}"))
}

/// The AWS region an STS endpoint's host names, if it names one: the label after `sts` or
/// `sts-fips` (`sts.eu-west-1.amazonaws.com`, `sts-fips.us-east-2.api.aws`,
/// `vpce-0abc.sts.us-east-1.vpce.amazonaws.com`) when it is shaped like a region. `None` for
/// the global endpoint, IP addresses, other hosts and endpoints that do not parse.
pub fn endpoint_region(endpoint: &str) -> Option<String> {
    let Ok(Endpoint {
        host: Host::Dns(labels),
        ..
    }) = parse_endpoint(endpoint)
    else {
        return None;
    };
    labels.windows(2).find_map(|w| match w {
        [sts, region] if (sts == "sts" || sts == "sts-fips") && is_region_label(region) => {
            Some(region.clone())
        }
        _ => None,
    })
}

/// Why an endpoint cannot be used with `region`: STS refuses a request signed for another
/// region than its endpoint's (a signature error, after the code was sent). `None` when the
/// endpoint names no region, or this one.
pub fn endpoint_region_mismatch(endpoint: &str, region: &str) -> Option<String> {
    let named = endpoint_region(endpoint)?;
    (named != region).then(|| {
        format!(
            "spec.endpoint is in region {named} but requests would be signed for region {region} (spec.region, default --default-region): STS would refuse them. Set spec.region to {named}, or use the endpoint of {region}"
        )
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LabelPattern {
    Literal(String),
    /// `*`: any one DNS label.
    Any,
    /// `{region}`: one label shaped like an AWS region name.
    Region,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HostPattern {
    Dns(Vec<LabelPattern>),
    Ip(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PortPattern {
    /// No port in the pattern: only the scheme's default port.
    Default,
    Exact(u16),
    /// `:*`: any port, including the default.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EndpointPattern {
    source: String,
    scheme: Scheme,
    host: HostPattern,
    port: PortPattern,
}

impl EndpointPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let raw = split_url(s)?;
        let host = match parse_host(raw.host, |l| l == "*" || l == "{region}" || is_dns_label(l))? {
            Host::Ip(a) => HostPattern::Ip(a),
            Host::Dns(labels) => HostPattern::Dns(
                labels
                    .into_iter()
                    .map(|l| match l.as_str() {
                        "*" => LabelPattern::Any,
                        "{region}" => LabelPattern::Region,
                        _ => LabelPattern::Literal(l),
                    })
                    .collect(),
            ),
        };
        let port = match raw.port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => {
                let p = parse_port(p)?;
                if p == raw.scheme.default_port() {
                    PortPattern::Default
                } else {
                    PortPattern::Exact(p)
                }
            }
        };
        Ok(EndpointPattern {
            source: s.to_owned(),
            scheme: raw.scheme,
            host,
            port,
        })
    }

    fn matches(&self, e: &Endpoint) -> bool {
        let port_ok = match self.port {
            PortPattern::Default => e.port.is_none(),
            PortPattern::Exact(p) => e.port == Some(p),
            PortPattern::Any => true,
        };
        let host_ok = match (&self.host, &e.host) {
            (HostPattern::Ip(p), Host::Ip(a)) => p == a,
            (HostPattern::Dns(pattern), Host::Dns(labels)) => {
                pattern.len() == labels.len()
                    && pattern.iter().zip(labels).all(|(p, l)| match p {
                        LabelPattern::Literal(lit) => lit == l,
                        LabelPattern::Any => true,
                        LabelPattern::Region => is_region_label(l),
                    })
            }
            _ => false,
        };
        self.scheme == e.scheme && port_ok && host_ok
    }
}

/// Which endpoints a `SessionToken` may name.
///
/// A pattern is a URL `scheme://host[:port]` where a host label may be `*` (any one DNS label)
/// or `{region}` (one label shaped like an AWS region name, e.g. `us-gov-west-1`), and the port
/// may be `*` (any port). Without a port a pattern allows only the scheme's default port. Hosts
/// are compared case-insensitively; IP literals only match a pattern naming that same address.
/// An empty pattern list allows no endpoint at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPolicy {
    patterns: Vec<EndpointPattern>,
}

/// The patterns of [`EndpointPolicy::aws_default`].
pub const AWS_DEFAULT_ENDPOINT_PATTERNS: &[&str] = &[
    // Global endpoint.
    "https://sts.amazonaws.com",
    // Regional endpoints, including GovCloud (sts.us-gov-west-1.amazonaws.com), and FIPS ones.
    "https://sts.{region}.amazonaws.com",
    "https://sts-fips.{region}.amazonaws.com",
    // Dual-stack endpoints.
    "https://sts.{region}.api.aws",
    "https://sts-fips.{region}.api.aws",
    // China.
    "https://sts.{region}.amazonaws.com.cn",
    "https://sts.{region}.api.amazonwebservices.com.cn",
    // Interface VPC endpoints: vpce-0abc-xyz[-us-east-1a].sts.us-east-1.vpce.amazonaws.com
    "https://*.sts.{region}.vpce.amazonaws.com",
    "https://*.sts-fips.{region}.vpce.amazonaws.com",
    "https://*.sts.{region}.vpce.amazonaws.com.cn",
];

impl EndpointPolicy {
    /// AWS's own STS endpoints, https only: see [`AWS_DEFAULT_ENDPOINT_PATTERNS`].
    pub fn aws_default() -> Self {
        let list: Vec<String> = AWS_DEFAULT_ENDPOINT_PATTERNS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        // The built-in patterns are valid (a unit test says so); an empty policy otherwise.
        Self::from_patterns(&list).unwrap_or(Self {
            patterns: Vec::new(),
        })
    }

    /// A policy from operator-supplied patterns (see the type's documentation).
    pub fn from_patterns(list: &[String]) -> Result<Self, String> {
        let patterns = list
            .iter()
            .map(|s| {
                EndpointPattern::parse(s.trim()).map_err(|why| {
                    format!(
                        "endpoint pattern {:?} is not valid: {why}",
                        truncate(s, 200)
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns })
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.source.as_str())
    }

    /// Whether a `SessionToken` may name this endpoint. The error says why not, in words fit for
    /// a status condition after "endpoint is not allowed: " (e.g. "it has a path; …", "https://x
    /// matches none of …"), and never repeats the input except its parsed scheme, host and port.
    pub fn check(&self, endpoint: &str) -> Result<(), String> {
        let e = parse_endpoint(endpoint)?;
        if self.patterns.iter().any(|p| p.matches(&e)) {
            return Ok(());
        }
        if self.patterns.is_empty() {
            return Err("the operator allows no custom STS endpoints".to_owned());
        }
        let allowed: Vec<&str> = self.patterns().collect();
        Err(truncate(
            &format!(
                "{e} matches none of the operator's allowed STS endpoints ({})",
                allowed.join(", ")
            ),
            1000,
        ))
    }
}
