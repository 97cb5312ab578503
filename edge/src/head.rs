//! Checks of a request head before it is routed: which host it is for, whether it fits in
//! `max_header_bytes`, and request targets the edge does not forward as they are.
//!
//! - **Host** (RFC 9112 section 3.2, RFC 9113 section 8.3.1): more than one `Host` field, an
//!   HTTP/1.1 request without one, or a `Host` that names another authority than an
//!   absolute-form target (`GET https://a.test/ HTTP/1.1`) or than HTTP/2's `:authority` is a
//!   400. The authority of the target (or `:authority`) is the one routed, as RFC 9112 section
//!   3.2.2 wants; with the check above it is the `Host` too.
//! - **Size**: hyper stops reading an HTTP/1 head once its buffer holds `max_header_bytes` of an
//!   unfinished head, but a head that completes within one read past that mark is parsed
//!   anyway (up to about twice the limit). [`head_size`] measures the parsed head as it was
//!   sent (request line, `name: value` lines, line ends), so the proxy can hold every head to
//!   the limit (431). HTTP/2 header lists are bounded by h2 itself.
//! - **Targets**: the asterisk form (`OPTIONS *`) is only valid with `OPTIONS` (400 otherwise)
//!   and is forwarded as `OPTIONS *`.
//! - **Transfer codings**: hyper decodes `chunked` only; a request body in any other coding
//!   (`Transfer-Encoding: gzip, chunked`) would reach the app still encoded and without a word
//!   saying so, so it is refused with 501 (RFC 9112 section 6.1), as Nginx does.

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

/// A request head the edge refuses before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// More than one `Host` field.
    #[error("The request has more than one Host header.")]
    DuplicateHost,
    /// An HTTP/1.1 request without `Host`.
    #[error("HTTP/1.1 requests need a Host header.")]
    MissingHost,
    /// `Host` is not a valid field value.
    #[error("The Host header is not valid.")]
    InvalidHost,
    /// `Host` names another authority than the request target or `:authority`.
    #[error("The Host header names another host than the request target.")]
    HostMismatch,
    /// Neither `Host` nor the target names a host.
    #[error("The request names no host (Host header or :authority).")]
    NoHost,
    /// The head is larger than `max_header_bytes`.
    #[error("The request head is larger than this server accepts.")]
    TooLarge,
    /// More header fields than `max_headers`.
    #[error("The request has too many header fields.")]
    TooManyFields,
    /// `*` as the target of another method than `OPTIONS`.
    #[error("Only OPTIONS may have * as its target.")]
    AsteriskForm,
    /// A transfer coding other than `chunked`.
    #[error("This server accepts no transfer coding but chunked.")]
    TransferCoding,
}

impl HeadError {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge | Self::TooManyFields => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The host a request is for, after the checks in the module docs.
pub fn request_host<B>(request: &Request<B>) -> Result<String, HeadError> {
    let mut fields = request.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    let field = field
        .map(|value| value.to_str().map_err(|_| HeadError::InvalidHost))
        .transpose()?;
    if field.is_none() && request.version() == Version::HTTP_11 {
        return Err(HeadError::MissingHost);
    }
    let target = request.uri().authority().map(|a| a.as_str());
    if let (Some(target), Some(field)) = (target, field) {
        if !same_authority(target, field, default_port(request.uri())) {
            return Err(HeadError::HostMismatch);
        }
    }
    target
        .or(field)
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
        .ok_or(HeadError::NoHost)
}

fn default_port(uri: &Uri) -> u16 {
    if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
        80
    } else {
        443
    }
}

/// Whether two authorities name the same host and port (case, a trailing dot and an omitted
/// default port aside).
fn same_authority(a: &str, b: &str, default_port: u16) -> bool {
    let (host_a, port_a) = split_authority(a);
    let (host_b, port_b) = split_authority(b);
    host_a.eq_ignore_ascii_case(host_b)
        && port_a.unwrap_or(default_port) == port_b.unwrap_or(default_port)
}

/// `host[:port]` (or `[v6]:port`) without the trailing dot of the host.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let authority = authority.trim();
    let (host, port) = if authority.starts_with('[') {
        match authority.rsplit_once("]:") {
            Some((host, port)) => (&authority[..host.len() + 1], Some(port)),
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    // An unparsable port never equals a number, so it cannot match anything.
    let port = port.map(|port| port.parse::<u16>().unwrap_or(0));
    (host.strip_suffix('.').unwrap_or(host), port)
}

/// The size of an HTTP/1 request head as the client sent it: request line, `name: value`
/// lines and CRLF line ends (optional whitespace around values, which hyper drops, is not
/// counted).
pub fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.len() + 3 + authority.as_str().len(),
        (None, Some(authority)) => authority.as_str().len(),
        _ => 0,
    } + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    // "METHOD target HTTP/1.1\r\n"
    let line = request.method().as_str().len() + 1 + target + 1 + 8 + 2;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// Whether the target is the asterisk form (`OPTIONS * HTTP/1.1`, or `:path: *` in HTTP/2).
pub fn is_asterisk_form(uri: &Uri) -> bool {
    uri.path() == "*"
}

/// Checks that only `OPTIONS` uses the asterisk form and that a body is at most `chunked`.
pub fn check_target<B>(request: &Request<B>) -> Result<(), HeadError> {
    if is_asterisk_form(request.uri()) && request.method() != Method::OPTIONS {
        return Err(HeadError::AsteriskForm);
    }
    let other_coding = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"));
    if other_coding {
        return Err(HeadError::TransferCoding);
    }
    Ok(())
}

/// `Allow` of the 405 for `CONNECT`: the methods the edge forwards.
pub const ALLOWED_METHODS: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH");

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        let h11 = Version::HTTP_11;
        let ok = |r: Request<()>| request_host(&r).unwrap();
        let err = |r: Request<()>| request_host(&r).unwrap_err();
        assert_eq!(ok(request(h11, "/", &["a.test:443"])), "a.test:443");
        assert_eq!(
            err(request(h11, "/", &["a.test", "b.test"])),
            HeadError::DuplicateHost
        );
        assert_eq!(
            err(request(h11, "/", &["a.test", "a.test"])),
            HeadError::DuplicateHost
        );
        assert_eq!(
            err(request(h11, "https://a.test/", &[])),
            HeadError::MissingHost
        );
        assert_eq!(
            ok(request(Version::HTTP_10, "https://a.test/", &[])),
            "a.test"
        );
        assert_eq!(err(request(Version::HTTP_10, "/", &[])), HeadError::NoHost);
        // Absolute form: the target's authority, which the Host must agree with.
        assert_eq!(
            ok(request(h11, "https://A.test/x", &["a.test.:443"])),
            "A.test"
        );
        assert_eq!(
            ok(request(h11, "http://a.test/x", &["a.test:80"])),
            "a.test"
        );
        assert_eq!(
            err(request(h11, "https://b.test/x", &["a.test"])),
            HeadError::HostMismatch
        );
        assert_eq!(
            err(request(h11, "https://a.test:8443/x", &["a.test"])),
            HeadError::HostMismatch
        );
        // CONNECT's authority form.
        assert_eq!(
            ok(request(h11, "a.test:443", &["a.test:443"])),
            "a.test:443"
        );
        // HTTP/2: :authority, and a host field must agree with it.
        let h2 = Version::HTTP_2;
        assert_eq!(ok(request(h2, "https://a.test/", &[])), "a.test");
        assert_eq!(ok(request(h2, "https://a.test/", &["A.TEST"])), "a.test");
        assert_eq!(
            err(request(h2, "https://a.test/", &["b.test"])),
            HeadError::HostMismatch
        );
        assert_eq!(ok(request(h2, "/", &["a.test"])), "a.test");
        assert_eq!(
            ok(request(h11, "/", &["[2001:db8::1]:443"])),
            "[2001:db8::1]:443"
        );
    }

    #[test]
    fn head_size_counts_what_was_sent() {
        let raw = "GET /a?b=c HTTP/1.1\r\nhost: a.test\r\nx-long: 0123456789\r\n\r\n";
        let request = Request::builder()
            .uri("/a?b=c")
            .header("host", "a.test")
            .header("x-long", "0123456789")
            .body(())
            .unwrap();
        assert_eq!(head_size(&request), raw.len());
        let raw = "OPTIONS * HTTP/1.1\r\nhost: a.test\r\n\r\n";
        let request = Request::builder()
            .method("OPTIONS")
            .uri("*")
            .header("host", "a.test")
            .body(())
            .unwrap();
        assert_eq!(head_size(&request), raw.len());
        let raw = "GET https://a.test/x HTTP/1.1\r\nhost: a.test\r\n\r\n";
        let request = Request::builder()
            .uri("https://a.test/x")
            .header("host", "a.test")
            .body(())
            .unwrap();
        assert_eq!(head_size(&request), raw.len());
    }

    #[test]
    fn asterisk_form_is_for_options_only() {
        let options = Request::builder()
            .method("OPTIONS")
            .uri("*")
            .body(())
            .unwrap();
        assert!(check_target(&options).is_ok());
        assert!(is_asterisk_form(options.uri()));
        let get = Request::builder().uri("*").body(()).unwrap();
        assert_eq!(check_target(&get), Err(HeadError::AsteriskForm));
        let normal = Request::builder().uri("/*").body(()).unwrap();
        assert!(!is_asterisk_form(normal.uri()));
    }

    #[test]
    fn only_chunked_transfer_coding() {
        let with = |values: &[&str]| {
            let mut builder = Request::builder().method("POST").uri("/");
            for value in values {
                builder = builder.header(header::TRANSFER_ENCODING, *value);
            }
            check_target(&builder.body(()).unwrap())
        };
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(with(&["chunked"]), Ok(()));
        assert_eq!(with(&["Chunked "]), Ok(()));
        assert_eq!(with(&["gzip, chunked"]), Err(HeadError::TransferCoding));
        assert_eq!(with(&["gzip", "chunked"]), Err(HeadError::TransferCoding));
        assert_eq!(
            HeadError::TransferCoding.status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
