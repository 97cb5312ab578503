//! A real browser for the dashboard tests: Debian's headless Chromium driven by its
//! chromedriver over WebDriver ([`fantoccini`]). Each [`Browser`] has its own chromedriver on a
//! free loopback port and a fresh profile directory, and trusts only control's certificate (by
//! its public key, `--ignore-certificate-errors-spki-list`), so TLS is verified as a user's
//! browser would after trusting control's CA.
//!
//! Chromium starts with the flags that keep it off the network (no background networking,
//! component updates, sync, QUIC): the tests only ever talk to loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::net::{free_tcp, loopback};
use crate::prereq;
use crate::process::Process;

/// The Chromium and chromedriver binaries Debian installs.
pub const TOOLS: &[&str] = &["chromium", "chromedriver"];

/// Whether the browser tests can run (skips with a reason, or fails under `CI=true`).
pub fn available(test: &str) -> bool {
    prereq::tools(test, TOOLS, "apt-get install chromium chromium-driver")
}

/// Desktop and phone window sizes for screenshots.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone-sized window.
pub const PHONE: (u32, u32) = (390, 844);

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium that trusts the certificate whose SPKI SHA-256 is
    /// `spki_sha256_b64` (base64). Logs go under `log_dir`.
    pub async fn start(log_dir: &Path, spki_sha256_b64: &str) -> anyhow::Result<Browser> {
        let port = free_tcp(loopback(1))?;
        let driver = Process::spawn(
            "chromedriver",
            &prereq::which("chromedriver").context("chromedriver not installed")?,
            [
                format!("--port={}", port.port()),
                "--allowed-ips=127.0.0.1".to_string(),
            ],
            log_dir,
            &[],
        )?;
        let profile = tempfile::tempdir()?;
        let chromium = prereq::which("chromium").context("chromium not installed")?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--ignore-certificate-errors-spki-list={spki_sha256_b64}"),
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
            }),
        );
        let url = format!("http://{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            // chromedriver listens on plain HTTP on loopback: no TLS stack for the WebDriver
            // client (fantoccini's rustls feature would bring in a second crypto provider).
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                // chromedriver is still starting: try again shortly.
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => bail!("cannot start a Chromium session through {url}: {error}"),
            }
        };
        Ok(Browser {
            client,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Opens `url` and waits for the document.
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Waits (up to 15 s) for an element matching CSS `selector`.
    pub async fn find(&self, selector: &str) -> anyhow::Result<fantoccini::elements::Element> {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(selector))
            .await
        {
            Ok(element) => Ok(element),
            Err(error) => Err(anyhow::Error::new(error)
                .context(format!("no element {selector:?} on {}", self.url().await))),
        }
    }

    /// Whether an element matching `selector` is on the page now.
    pub async fn has(&self, selector: &str) -> anyhow::Result<bool> {
        Ok(!self
            .client
            .find_all(Locator::Css(selector))
            .await?
            .is_empty())
    }

    /// Types `text` into the input `selector` (after clearing it).
    pub async fn fill(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let input = self.find(selector).await?;
        input.clear().await?;
        input.send_keys(text).await?;
        Ok(())
    }

    /// Clicks `selector`.
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        self.find(selector).await?.click().await?;
        Ok(())
    }

    /// The text of `selector`.
    pub async fn text(&self, selector: &str) -> anyhow::Result<String> {
        Ok(self.find(selector).await?.text().await?)
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// A cookie's value.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .get_named_cookie(name)
            .await
            .with_context(|| format!("no cookie {name}"))?
            .value()
            .to_string())
    }

    /// The flags of a cookie as the browser stored them: (HttpOnly, Secure, SameSite).
    pub async fn cookie_flags(&self, name: &str) -> anyhow::Result<(bool, bool, Option<String>)> {
        let cookie = self
            .client
            .get_named_cookie(name)
            .await
            .with_context(|| format!("no cookie {name}"))?;
        Ok((
            cookie.http_only().unwrap_or(false),
            cookie.secure().unwrap_or(false),
            cookie.same_site().map(|s| s.to_string()),
        ))
    }

    /// Saves a PNG of the window at `size` to `dir/name` when screenshots are asked for
    /// ([`screenshot_dir`]).
    pub async fn screenshot(&self, name: &str, size: (u32, u32)) -> anyhow::Result<()> {
        let Some(dir) = screenshot_dir() else {
            return Ok(());
        };
        self.client.set_window_size(size.0, size.1).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.client.screenshot().await?;
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), png)?;
        self.client.set_window_size(DESKTOP.0, DESKTOP.1).await?;
        Ok(())
    }

    /// Ends the session.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}

/// Where screenshots go: `KOKOA_SCREENSHOTS` (relative to the workspace root), or none.
pub fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KOKOA_SCREENSHOTS")?;
    let dir = PathBuf::from(dir);
    Some(if dir.is_absolute() {
        dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
    })
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the first certificate in `chain_pem`
/// (what Chromium's `--ignore-certificate-errors-spki-list` takes).
pub fn spki_sha256(cert_der: &[u8]) -> anyhow::Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let spki = spki_of(cert_der).context("no SubjectPublicKeyInfo in the certificate")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki)))
}

/// The DER of the SubjectPublicKeyInfo inside an X.509 certificate.
fn spki_of(der: &[u8]) -> Option<&[u8]> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw)
}

/// The current TOTP code (offset by `steps` periods) for a base32 `secret`.
pub fn totp_code(secret_base32: &str, steps: i64) -> anyhow::Result<String> {
    let secret = totp_rs::Secret::Encoded(secret_base32.trim().to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("bad TOTP secret: {e:?}"))?;
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        secret,
        None,
        "test".into(),
    )
    .map_err(|e| anyhow::anyhow!("TOTP: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let at = now.saturating_add_signed(steps * 30);
    Ok(totp.generate(at))
}
