//! The sample app that `kokoa-control dev` publishes: a tiny HTTP/1.1 server that answers with
//! what it saw, so a newcomer can check at a glance that the request crossed the tunnel and which
//! forwarded headers the edge added.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Headers the edge adds; the page shows them first.
const FORWARDED: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Serves the sample app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "sample app: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, peer));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "sample app: connection error");
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let received = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let mut page = String::from("Hello from the Kokoa sample app, behind the tunnel.\n\n");
    page.push_str(&format!(
        "{} {} {:?}\n",
        parts.method, parts.uri, parts.version
    ));
    page.push_str(&format!("tcp peer (the origin): {peer}\n"));
    page.push_str(&format!(
        "request body: {received} bytes\n\nforwarded by the edge:\n"
    ));
    for name in FORWARDED {
        let value = parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        page.push_str(&format!("  {name}: {value}\n"));
    }
    page.push_str("\nall headers:\n");
    for (name, value) in &parts.headers {
        page.push_str(&format!(
            "  {name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
