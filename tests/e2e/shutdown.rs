//! SIGTERM: both binaries stop accepting, let requests in flight finish, and exit 0 within the
//! drain time.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use http_body_util::{BodyExt as _, Empty};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::{request, Proto};
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;

use crate::run_bounded;

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("drain", loopback(1)).await?;
        let drain = 3;
        let mut topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("drain.test", "home", 8001)
            .drain_timeout(drain)
            .start()
            .await?;
        let client = topology.client()?;
        let answer = client.get("drain.test", "/", Proto::Http2).await?;
        ensure!(answer.status == 200);

        // A slow response (5 chunks over 600 ms) is in flight when the signals come.
        let mut connection = client.connect("drain.test", Proto::Http1).await?;
        let response = connection
            .send(request(
                "drain.test",
                "/stream",
                "GET",
                Empty::new().boxed(),
            )?)
            .await?;
        ensure!(response.status() == 200);
        let mut body = response.into_body();
        let first = body
            .frame()
            .await
            .context("the stream ended before its first chunk")??;
        let mut text = String::from_utf8_lossy(first.data_ref().context("data")?).into_owned();

        let limit = Duration::from_secs(drain + 2);
        let started = Instant::now();
        topology.edge.process.signal("TERM").await?;
        for origin in &topology.origins {
            origin.process.signal("TERM").await?;
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the in-flight response was cut by the shutdown")?;
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
        ensure!(
            text == "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
            "in-flight response during drain: {text:?}"
        );

        let status = topology.edge.process.wait_exit(limit).await?;
        ensure!(
            status.success(),
            "kokoa-edge exited with {status}\n{}",
            topology.edge.process.logs()
        );
        for origin in &mut topology.origins {
            let status = origin.process.wait_exit(limit).await?;
            ensure!(
                status.success(),
                "kokoa-origin exited with {status}\n{}",
                origin.process.logs()
            );
        }
        eprintln!("both exited after {:?}", started.elapsed());
        ensure!(
            topology
                .client()?
                .get("drain.test", "/", Proto::Http1)
                .await
                .is_err(),
            "the edge still answers after exiting"
        );
        Ok(())
    });
}
