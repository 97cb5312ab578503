//! Parsers for the load generators' reports (wrk, h2load, curl). Pure, unit tested; the
//! commands themselves are run by `compare`.

use thiserror::Error;

/// A report that does not say what it should.
#[derive(Debug, Error)]
pub enum ParseError {
    /// A field is absent.
    #[error("{tool} output has no {field}; is the tool the expected version? output:\n{output}")]
    Missing {
        /// wrk, h2load, curl.
        tool: &'static str,
        /// What was looked for.
        field: &'static str,
        /// The whole output, for diagnosis.
        output: String,
    },
}

/// What wrk measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkReport {
    /// `Requests/sec`.
    pub requests_per_sec: f64,
    /// 50% latency, ms (only with `--latency`).
    pub p50_ms: Option<f64>,
    /// 99% latency, ms (only with `--latency`).
    pub p99_ms: Option<f64>,
    /// Non-2xx/3xx responses plus socket errors other than connect-close races.
    pub errors: u64,
    /// Total requests completed.
    pub requests: u64,
}

fn duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's text report.
pub fn parse_wrk(output: &str) -> Result<WrkReport, ParseError> {
    let missing = |field| ParseError::Missing {
        tool: "wrk",
        field,
        output: output.to_owned(),
    };
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    let mut requests = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = duration_ms(rest);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = duration_ms(rest);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                if let (Some(_kind), Some(n)) = (words.next(), words.next()) {
                    errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        } else if line.contains("requests in") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(WrkReport {
        requests_per_sec: rps.ok_or_else(|| missing("Requests/sec"))?,
        p50_ms: p50,
        p99_ms: p99,
        errors,
        requests: requests.ok_or_else(|| missing("the 'N requests in' line"))?,
    })
}

/// What h2load measured.
#[derive(Clone, Debug, PartialEq)]
pub struct H2loadReport {
    /// `req/s` of the `finished in` line.
    pub requests_per_sec: f64,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Failed + errored + timed out requests, and non-2xx statuses.
    pub errors: u64,
}

/// Parses h2load's text report.
pub fn parse_h2load(output: &str) -> Result<H2loadReport, ParseError> {
    let missing = |field| ParseError::Missing {
        tool: "h2load",
        field,
        output: output.to_owned(),
    };
    let mut rps = None;
    let mut succeeded = None;
    let mut errors = 0u64;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in") {
            // "finished in 10.00s, 54321.00 req/s, 12.34MB/s"
            rps = rest
                .split(',')
                .find(|p| p.trim().ends_with("req/s"))
                .and_then(|p| p.trim().trim_end_matches("req/s").trim().parse().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "succeeded" => succeeded = Some(n),
                    "failed" | "errored" | "timeout" => errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // "N 2xx, N 3xx, N 4xx, N 5xx"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                if let (Some(n), Some("4xx" | "5xx")) = (words.next(), words.next()) {
                    errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok(H2loadReport {
        requests_per_sec: rps.ok_or_else(|| missing("'finished in ... req/s'"))?,
        succeeded: succeeded.ok_or_else(|| missing("'requests: ... succeeded'"))?,
        errors,
    })
}

/// Parses curl's `-w '%{http_code} %{size_download} %{size_upload}'`.
pub fn parse_curl_write_out(output: &str) -> Result<(u16, u64, u64), ParseError> {
    let missing = |field| ParseError::Missing {
        tool: "curl",
        field,
        output: output.to_owned(),
    };
    let mut words = output.split_whitespace();
    let status = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| missing("http_code"))?;
    let down = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| missing("size_download"))?;
    let up = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| missing("size_upload"))?;
    Ok((status, down, up))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ https://bench.test:8443/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.81ms    1.02ms  30.12ms   85.00%
    Req/Sec    11.45k     1.01k   13.00k    70.00%
  Latency Distribution
     50%    2.61ms
     75%    3.10ms
     90%    3.90ms
     99%  812.00us
  228054 requests in 10.01s, 60.47MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  22783.52
Transfer/sec:      6.04MB
";

    #[test]
    fn wrk_report() {
        let r = parse_wrk(WRK).expect("parses");
        assert_eq!(r.requests_per_sec, 22783.52);
        assert_eq!(r.p50_ms, Some(2.61));
        assert_eq!(r.p99_ms, Some(0.812));
        assert_eq!(r.errors, 6);
        assert_eq!(r.requests, 228054);
        assert!(parse_wrk("unable to connect to bench.test:8443 Connection refused").is_err());
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(duration_ms("1.50s"), Some(1500.0));
        assert_eq!(duration_ms(" 250.00us"), Some(0.25));
        assert_eq!(duration_ms("2.00m"), Some(120_000.0));
        assert_eq!(duration_ms("x"), None);
    }

    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 1s warm-up time and 10s main duration
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 11.01s, 40123.40 req/s, 9.87MB/s
requests: 401234 total, 401300 started, 401234 done, 401230 succeeded, 4 failed, 0 errored, 0 timeout
status codes: 401230 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 98.76MB (103556789) total, 1.23MB (1289563) headers (space savings 95.12%), 13.4MB data
";

    #[test]
    fn h2load_report() {
        let r = parse_h2load(H2LOAD).expect("parses");
        assert_eq!(r.requests_per_sec, 40123.40);
        assert_eq!(r.succeeded, 401230);
        assert_eq!(r.errors, 6);
        assert!(parse_h2load("no protocol negotiated").is_err());
    }

    #[test]
    fn curl_write_out() {
        assert_eq!(
            parse_curl_write_out("200 67108864 0").expect("parses"),
            (200, 67108864, 0)
        );
        assert!(parse_curl_write_out("000").is_err());
    }
}
