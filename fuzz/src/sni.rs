//! SNI values against the edge's certificate store (`kokoa_edge::sni::CertStore::select`, what
//! the rustls resolver calls on every handshake), with certificates made by rcgen once.
//!
//! Invariants: a selected certificate has a SAN matching the name (exact, or a wildcard
//! covering exactly one non-empty label), else it is the default; an exact SAN always wins;
//! without a default, no match means `None` (the handshake is refused), never a panic.

use std::sync::{Arc, OnceLock};

use kokoa_edge::sni::CertStore;
use kokoa_model::{Certificate, HostPattern};
use rustls::sign::CertifiedKey;

/// The certificates' SANs; the first one's first name is the default.
pub const CERTS: &[&[&str]] = &[
    &["app.example.com", "www.example.com"],
    &["*.example.com"],
    &["api.example.org", "*.dev.example.org"],
];

struct Stores {
    certs: Vec<Arc<CertifiedKey>>,
    with_default: CertStore,
    without_default: CertStore,
}

fn stores() -> &'static Stores {
    static STORES: OnceLock<Stores> = OnceLock::new();
    STORES.get_or_init(|| {
        let models: Vec<Certificate> = CERTS
            .iter()
            .map(|names| {
                let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
                let generated = rcgen::generate_simple_self_signed(names).expect("rcgen");
                Certificate::from_pem(&generated.cert.pem(), &generated.key_pair.serialize_pem())
                    .expect("a certificate")
            })
            .collect();
        let default = HostPattern::new(CERTS[0][0]).expect("a host");
        Stores {
            with_default: CertStore::from_certificates(&models, Some(&default))
                .expect("store with default"),
            without_default: CertStore::from_certificates(&models, None)
                .expect("store without default"),
            certs: models.iter().map(|c| c.certified_key().clone()).collect(),
        }
    })
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            name.strip_suffix(domain)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                || name == pattern
        }
        None => pattern == name,
    }
}

/// Which certificates (by index) have a SAN matching `name`, and which match it exactly.
fn candidates(name: &str) -> (Vec<usize>, Vec<usize>) {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let any = (0..CERTS.len())
        .filter(|&i| CERTS[i].iter().any(|p| matches(p, &n)))
        .collect();
    let exact = (0..CERTS.len())
        .filter(|&i| CERTS[i].iter().any(|p| *p == n))
        .collect();
    (any, exact)
}

/// Selects a certificate for `sni` in both stores and checks the invariants.
pub fn check(sni: &str) {
    let s = stores();
    let index = |c: &Arc<CertifiedKey>| s.certs.iter().position(|x| Arc::ptr_eq(x, c));
    let (any, exact) = candidates(sni);
    let chosen = s.without_default.select(Some(sni)).map(|c| index(&c));
    match chosen {
        Some(Some(i)) => {
            assert!(
                any.contains(&i),
                "{sni:?} got cert {i} whose SANs do not match"
            );
            assert!(
                exact.is_empty() || exact.contains(&i),
                "exact SAN must win for {sni:?}"
            );
        }
        Some(None) => panic!("{sni:?} got a certificate that is not in the store"),
        None => assert!(
            any.is_empty(),
            "{sni:?} matches certs {any:?} but none was chosen"
        ),
    }
    let with_default = s.with_default.select(Some(sni)).map(|c| index(&c));
    match chosen {
        Some(i) => assert_eq!(with_default, Some(i), "default changed a match for {sni:?}"),
        None => assert_eq!(with_default, Some(Some(0)), "{sni:?} must get the default"),
    }
}

/// Runs one fuzz input: an SNI is ASCII on the wire, but the resolver must not care.
pub fn run(data: &[u8]) {
    check(&String::from_utf8_lossy(data));
    if data.is_empty() {
        assert!(stores().without_default.select(None).is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_agrees_on_known_names() {
        for sni in [
            "app.example.com",
            "WWW.Example.com.",
            "x.example.com",
            "a.b.example.com",
            "x.dev.example.org",
            "dev.example.org",
            "*.example.com",
            "unknown.test",
            "",
            ".",
        ] {
            check(sni);
        }
    }
}
