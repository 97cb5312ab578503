//! SIGTERM: both binaries stop accepting, drain, and exit 0 within the drain time.

use std::time::{Duration, Instant};

use anyhow::ensure;
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::Proto;
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;

use crate::run_bounded;

#[test]
fn sigterm_exits_zero_within_the_drain_time() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("drain", loopback(1)).await?;
        let drain = 3;
        let mut topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("drain.test", "home", 8001)
            .drain_timeout(drain)
            .start()
            .await?;
        // Traffic first, so that pooled tunnel connections are open when the signal comes.
        let answer = topology
            .client()?
            .get("drain.test", "/", Proto::Http2)
            .await?;
        ensure!(answer.status == 200);

        let limit = Duration::from_secs(drain + 2);
        let started = Instant::now();
        topology.edge.process.signal("TERM").await?;
        for origin in &topology.origins {
            origin.process.signal("TERM").await?;
        }
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
        Ok(())
    });
}
