//! Host routing over HTTP/1.1 and HTTP/2, forwarded headers, unknown hosts, a stopped app.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::Proto;
use kokoa_tests::net::{loopback, metric};
use kokoa_tests::topology::Builder;

use crate::run_bounded;

#[test]
fn two_hosts_two_origins_h1_h2_headers_404_and_stopped_app() {
    run_bounded(Duration::from_secs(90), async {
        let mut alpha = HttpApp::start("alpha", loopback(1)).await?;
        let beta = HttpApp::start("beta", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, alpha.addr)])
            .origin("lab", &[("web", 8001, beta.addr)])
            .route("alpha.test", "home", 8001)
            .route("beta.test", "lab", 8001)
            .certificate_name("nobody.test")
            .start()
            .await?;
        let client = topology.client()?;

        for proto in [Proto::Http1, Proto::Http2] {
            for (host, app) in [("alpha.test", "alpha"), ("beta.test", "beta")] {
                let answer = client
                    .get(host, "/echo/path?q=1", proto)
                    .await
                    .with_context(|| format!("GET {host} over {proto:?}"))?;
                let body = answer.text();
                ensure!(
                    answer.status == 200,
                    "{host} {proto:?}: {} {body}",
                    answer.status
                );
                ensure!(
                    answer.headers.get("x-app").and_then(|v| v.to_str().ok()) == Some(app),
                    "{host} was served by {:?}, expected {app}",
                    answer.headers.get("x-app")
                );
                ensure!(body.contains("\"method\":\"GET\""), "{body}");
                ensure!(body.contains("\"path\":\"/echo/path?q=1\""), "{body}");
                // The app sees who really asked, through the edge.
                ensure!(body.contains("\"x-forwarded-for\":\"127.0.0.1\""), "{body}");
                ensure!(body.contains("\"x-real-ip\":\"127.0.0.1\""), "{body}");
                ensure!(body.contains("\"x-forwarded-proto\":\"https\""), "{body}");
                ensure!(
                    body.contains(&format!("\"x-forwarded-host\":\"{host}")),
                    "{body}"
                );
            }
        }

        // A name the edge has a certificate for but no route: 404, on both protocols.
        for proto in [Proto::Http1, Proto::Http2] {
            let answer = client.get("nobody.test", "/", proto).await?;
            ensure!(
                answer.status == 404,
                "unknown host over {proto:?} gave {} {}",
                answer.status,
                answer.text()
            );
        }

        // One access line per request (at `info`, the tests' default log level), naming the
        // host, path, status and the origin that served it.
        // The line is written when the response body has been handed over, which can be just
        // after the client has it: wait for it briefly.
        let wanted: [&[&str]; 3] = [
            &[
                "host=alpha.test",
                "path=/echo/path",
                "status=200",
                "origin=home",
            ],
            &["host=beta.test", "status=200", "origin=lab"],
            &["host=nobody.test", "status=404"],
        ];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let logs = topology.edge.process.logs();
            let missing = wanted.iter().find(|needles| {
                !logs.lines().any(|line| {
                    line.contains("kokoa_edge::access") && needles.iter().all(|n| line.contains(n))
                })
            });
            let Some(needles) = missing else { break };
            ensure!(
                std::time::Instant::now() < deadline,
                "no access line with {needles:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The plain HTTP listener sends clients to HTTPS, keeping path and query.
        let mut plain = tokio::net::TcpStream::connect(topology.edge.spec.http).await?;
        tokio::io::AsyncWriteExt::write_all(
            &mut plain,
            b"GET /x?y=1 HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let mut redirect = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut plain, &mut redirect).await?;
        let lower = redirect.to_ascii_lowercase();
        ensure!(
            lower.starts_with("http/1.1 30") && lower.contains("location: https://alpha.test"),
            "plain HTTP answered {redirect}"
        );
        ensure!(
            lower.contains("/x?y=1"),
            "redirect lost the path: {redirect}"
        );

        // Stopping one app: its host gets 502/503, the other keeps serving.
        alpha.stop().await;
        let status =
            kokoa_tests::eventually("stopped app gives 502/503", Duration::from_secs(20), || {
                let client = client.clone();
                async move {
                    let answer = client.get("alpha.test", "/", Proto::Http1).await?;
                    ensure!(
                        answer.status == 502 || answer.status == 503,
                        "still {}",
                        answer.status
                    );
                    Ok(answer.status)
                }
            })
            .await?;
        eprintln!("stopped app answered {status}");
        for proto in [Proto::Http1, Proto::Http2] {
            let answer = client.get("beta.test", "/", proto).await?;
            ensure!(
                answer.status == 200,
                "beta after alpha stopped: {}",
                answer.status
            );
        }
        Ok(())
    });
}

#[test]
fn responses_stream_without_buffering() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("streamer", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("stream.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        for proto in [Proto::Http1, Proto::Http2] {
            let mut connection = client.connect("stream.test", proto).await?;
            let request = kokoa_tests::client::request(
                "stream.test",
                "/stream",
                "GET",
                http_body_util::BodyExt::boxed(http_body_util::Empty::new()),
            )?;
            let response = connection.send(request).await?;
            ensure!(response.status() == 200);
            let mut body = response.into_body();
            let start = std::time::Instant::now();
            let mut arrivals = Vec::new();
            let mut text = String::new();
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if let Some(data) = frame?.data_ref() {
                    arrivals.push(start.elapsed());
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            ensure!(
                text == "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
                "{text:?}"
            );
            // The app spaces its 5 chunks 150 ms apart: if the edge buffered the body, they
            // would all arrive together.
            let first = arrivals.first().copied().unwrap_or_default();
            let last = arrivals.last().copied().unwrap_or_default();
            ensure!(
                last.saturating_sub(first) >= Duration::from_millis(300),
                "{proto:?}: chunks arrived at {arrivals:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn one_origin_served_by_two_edges() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("shared", loopback(1)).await?;
        let mut topology = Builder::new()
            .edges(2)
            .origin("home", &[("web", 8001, app.addr)])
            .route("shared.test", "home", 8001)
            .start()
            .await?;
        for edge in topology.edges() {
            let client = kokoa_tests::client::EdgeClient::new(edge.spec.https, &topology.ca)?;
            for proto in [Proto::Http1, Proto::Http2] {
                let answer = client.get("shared.test", "/via", proto).await?;
                ensure!(
                    answer.status == 200,
                    "{} via {}",
                    answer.status,
                    edge.spec.https
                );
                ensure!(
                    answer.text().contains("\"path\":\"/via\""),
                    "{}",
                    answer.text()
                );
            }
        }
        // The origin's metrics see both edges and the streams they opened.
        let admin = topology.origin("home")?.spec.admin;
        for edge in ["edge", "edge1"] {
            let series = format!("kokoa_tunnel_peer_last_handshake_age_seconds{{edge=\"{edge}\"}}");
            let age = metric(admin, &series).await?;
            ensure!(
                age.is_some_and(|a| a < 60.0),
                "{edge} handshake age {age:?}"
            );
        }
        let handshakes = metric(admin, "kokoa_tunnel_handshakes_total").await?;
        ensure!(
            handshakes.unwrap_or(0.0) >= 2.0,
            "handshakes {handshakes:?}"
        );
        let accepted = metric(admin, "kokoa_origin_streams_accepted_total").await?;
        ensure!(
            accepted.unwrap_or(0.0) >= 2.0,
            "streams accepted {accepted:?}"
        );

        // One edge going away does not disturb the other.
        topology.edge.process.signal("TERM").await?;
        topology
            .edge
            .process
            .wait_exit(Duration::from_secs(6))
            .await?;
        let second = &topology.more_edges[0];
        let client = kokoa_tests::client::EdgeClient::new(second.spec.https, &topology.ca)?;
        let answer = client.get("shared.test", "/after", Proto::Http1).await?;
        ensure!(
            answer.status == 200,
            "second edge after the first left: {}",
            answer.status
        );
        Ok(())
    });
}

#[test]
fn origin_restarting_on_a_new_udp_port_is_followed_by_the_edge() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("restart", loopback(1)).await?;
        let mut topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("restart.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        let answer = client.get("restart.test", "/before", Proto::Http1).await?;
        ensure!(answer.status == 200);

        // The origin goes away and comes back with the same key from another UDP port, as an
        // origin behind NAT does after a reboot or a new NAT mapping.
        let dir = topology.path();
        let origin = &mut topology.origins[0];
        origin.process.signal("TERM").await?;
        let status = origin.process.wait_exit(Duration::from_secs(6)).await?;
        ensure!(status.success(), "origin exited with {status}");
        origin.spec.listen = kokoa_tests::net::free_udp(loopback(11))?;
        let spec = origin.spec.clone();
        origin.process = kokoa_tests::topology::start_origin(&dir, "home-again", &spec).await?;
        let origin = topology.origin("home")?;
        topology.wait_handshake(origin, "edge").await?;

        // Requests flow again; connections pooled before the restart must not wedge the route.
        kokoa_tests::eventually(
            "the edge serves after the origin moved",
            Duration::from_secs(20),
            || {
                let client = client.clone();
                async move {
                    for proto in [Proto::Http1, Proto::Http2] {
                        let answer = client.get("restart.test", "/after", proto).await?;
                        ensure!(answer.status == 200, "{proto:?}: {}", answer.status);
                    }
                    Ok(())
                }
            },
        )
        .await?;
        Ok(())
    });
}

#[test]
fn curl_reads_the_413_of_an_upload_over_the_limit_on_both_protocols() {
    let test = "curl_reads_the_413_of_an_upload_over_the_limit_on_both_protocols";
    if !kokoa_tests::prereq::tools(test, &["curl"], "apt-get install curl") {
        return;
    }
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("limited", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route_with(
                "up.test",
                "home",
                8001,
                kokoa_tests::config::Limits {
                    max_body_bytes: Some(1024),
                    ..Default::default()
                },
            )
            .start()
            .await?;
        let file = topology.path().join("upload.bin");
        std::fs::write(&file, vec![b'x'; 100_000])?;
        let https = topology.edge.spec.https;
        // Declared too large: the edge answers before reading the body. Over HTTP/2 it then
        // reads and discards what curl has in flight rather than resetting the stream under
        // the upload, which curl 7.x reports as a framing error and no response.
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let output = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "-k",
                    flag,
                    "--resolve",
                    &format!("up.test:{}:{}", https.port(), https.ip()),
                    "--data-binary",
                    &format!("@{}", file.display()),
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                    &format!("https://up.test:{}/upload", https.port()),
                ])
                .output()
                .await?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            ensure!(
                output.status.success() && stdout == format!("413 {version}"),
                "curl {flag}: {} {stdout:?} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let refused = metric(
            topology.edge.spec.admin,
            "kokoa_edge_body_too_large_total{host=\"up.test\"}",
        )
        .await?;
        ensure!(refused == Some(2.0), "body_too_large: {refused:?}");
        ensure!(
            app.stats.snapshot() == (0, 0, 0, 0),
            "an upload reached the app: {:?}",
            app.stats.snapshot()
        );
        Ok(())
    });
}

#[test]
fn malformed_chunked_framing_is_a_400_through_the_tunnel() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("chunks", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("chunks.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        for size in ["-5", "0x5", "123456789abcdef012", "5\n"] {
            let line = if size.ends_with('\n') {
                size.to_owned()
            } else {
                format!("{size}\r\n")
            };
            let request = format!(
                "POST /upload HTTP/1.1\r\nHost: chunks.test\r\nTransfer-Encoding: chunked\r\n\r\n{line}hello\r\n0\r\n\r\n"
            );
            let answer = client
                .raw_http1("chunks.test", request.into_bytes(), Duration::from_secs(10))
                .await?;
            ensure!(
                answer.status() == Some(400),
                "chunk size {size:?}: {:?}",
                String::from_utf8_lossy(&answer.bytes)
            );
        }
        // Nothing is left open at the app.
        kokoa_tests::eventually(
            "the uploads end at the app",
            Duration::from_secs(10),
            || {
                let stats = app.stats.snapshot();
                async move {
                    ensure!(stats.0 == 0, "uploads still open: {stats:?}");
                    Ok(())
                }
            },
        )
        .await?;
        let admin = topology.edge.spec.admin;
        let client_errors = metric(
            admin,
            "kokoa_edge_requests_total{host=\"chunks.test\",class=\"4xx\"}",
        )
        .await?;
        ensure!(client_errors == Some(4.0), "4xx: {client_errors:?}");
        let origin_errors = metric(
            admin,
            "kokoa_edge_requests_total{host=\"chunks.test\",class=\"5xx\"}",
        )
        .await?;
        ensure!(origin_errors.is_none(), "5xx: {origin_errors:?}");
        Ok(())
    });
}
