//! Configuration files of every process the comparison starts: the app (Nginx serving static
//! files), the Nginx TLS fronts, `kokoa-edge` and `kokoa-origin`. Pure text rendering, unit
//! tested; every front gets the same certificate and TLS settings.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// Host name of the static app (small body, 1 MiB and 64 MiB files).
pub const APP_HOST: &str = "bench.test";
/// Host name of the upload sink.
pub const UPLOAD_HOST: &str = "upload.bench.test";
/// Port of the static app in the origin namespace (all addresses).
pub const APP_PORT: u16 = 8080;
/// Port of the upload sink in the origin namespace (all addresses).
pub const SINK_PORT: u16 = 8081;
/// The TLS port every front listens on, on the edge namespace's loopback.
pub const TLS_PORT: u16 = 8443;
/// Idle upstream connections kept, in total, by every front: kokoa-edge's
/// `upstream_keepalive`, Nginx's `keepalive` times its two workers. It matches the largest
/// concurrency of the loads (HTTP/2: 16 x 16 streams), so no contender closes and reopens
/// upstream connections per request; with kokoa-edge's default (64) the HTTP/2 load spends
/// its time opening tunnel connections (see the results' notes).
pub const UPSTREAM_POOL: usize = 256;
/// The small body served at `/`.
pub const SMALL_BODY: &str = "hello from the kokoa benchmark app\n";
/// File names of the bulk files.
pub const FILE_1M: &str = "1m.bin";
/// 64 MiB file.
pub const FILE_64M: &str = "64m.bin";

/// Paths Nginx writes to (pid, logs, temp dirs), all under one private directory.
fn nginx_common(out: &mut String, dir: &Path, workers: usize, connections: usize) {
    let d = dir.display();
    let nofile = crate::sys::nofile();
    let connections = connections.min(nofile.saturating_sub(128) as usize);
    let _ = writeln!(
        out,
        "daemon off;\nmaster_process on;\nworker_processes {workers};\n\
         worker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections {connections}; }}\n"
    );
}

fn nginx_http_common(out: &mut String, dir: &Path) {
    let d = dir.display();
    let _ = writeln!(
        out,
        "    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n    keepalive_timeout 300s;\n\
         \x20   keepalive_requests 10000000;\n    default_type application/octet-stream;"
    );
}

/// Where contender 5's relay listens on the origin host for the app and the upload sink.
pub const RELAY_PORTS: (u16, u16) = (8090, 8091);

/// Debian's dynamic module for Nginx's `stream` (TCP proxy), from `libnginx-mod-stream`.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Contender 5's relay on the origin host: Nginx `stream`, one worker (as one `kokoa-origin`
/// runtime thread), each connection on `listen_ip` at [`RELAY_PORTS`] relayed to the app or
/// the sink on 127.0.0.1, as Kokoa's origin connects to them.
pub fn nginx_relay(dir: &Path, listen_ip: std::net::Ipv4Addr) -> String {
    let mut out = format!("load_module {NGINX_STREAM_MODULE};\n");
    nginx_common(&mut out, dir, 1, 4096);
    out.push_str("stream {\n");
    for (listen, target) in [(RELAY_PORTS.0, APP_PORT), (RELAY_PORTS.1, SINK_PORT)] {
        let _ = writeln!(
            out,
            "    server {{\n        listen {listen_ip}:{listen};\n\
             \x20       proxy_pass 127.0.0.1:{target};\n        proxy_timeout 300s;\n    }}"
        );
    }
    out.push_str("}\n");
    out
}

/// The app: Nginx in the origin namespace serving `root` on every address at [`APP_PORT`].
pub fn nginx_app(dir: &Path, root: &Path) -> String {
    let mut out = String::new();
    nginx_common(&mut out, dir, 1, 4096);
    out.push_str("http {\n");
    nginx_http_common(&mut out, dir);
    let _ = writeln!(
        out,
        "    sendfile on;\n    tcp_nopush on;\n    open_file_cache max=16;\n\
         \x20   server {{\n        listen {APP_PORT} reuseport;\n        root {};\n\
         \x20       index index.html;\n    }}\n}}",
        root.display()
    );
    out
}

/// The certificate and TLS settings shared by every Nginx front.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM chain (leaf then CA).
    pub cert: PathBuf,
    /// PEM PKCS#8 key.
    pub key: PathBuf,
}

/// An Nginx TLS front in the edge namespace: HTTP/1.1 and HTTP/2 on 127.0.0.1:[`TLS_PORT`],
/// `proxy_pass` with upstream keep-alive to `app` (the static app) and `upload` (the sink),
/// chosen by Host. Responses stream through memory buffers (no temp files), request bodies are
/// not buffered: the same streaming behaviour as kokoa-edge.
pub fn nginx_front(dir: &Path, tls: &TlsFiles, app: SocketAddr, upload: SocketAddr) -> String {
    let mut out = String::new();
    nginx_common(&mut out, dir, 2, 16384);
    out.push_str("http {\n");
    nginx_http_common(&mut out, dir);
    let _ = writeln!(
        out,
        "    upstream app {{ server {app}; keepalive {}; }}\n\
         \x20   upstream upload {{ server {upload}; keepalive 16; }}\n\
         \x20   ssl_certificate {};\n    ssl_certificate_key {};\n\
         \x20   ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_ecdh_curve X25519:prime256v1;\n\
         \x20   ssl_prefer_server_ciphers off;\n    ssl_session_cache shared:SSL:10m;\n\
         \x20   ssl_session_tickets off;\n    client_max_body_size 0;\n\
         \x20   proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n\
         \x20   proxy_set_header Host $host;\n\
         \x20   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20   proxy_set_header X-Forwarded-Proto https;\n\
         \x20   proxy_buffers 8 64k;\n    proxy_buffer_size 64k;\n\
         \x20   proxy_busy_buffers_size 128k;\n    proxy_max_temp_file_size 0;\n\
         \x20   proxy_request_buffering off;\n    client_body_buffer_size 64k;",
        UPSTREAM_POOL / 2,
        tls.cert.display(),
        tls.key.display()
    );
    // reuseport (once per address) spreads connections evenly over the workers.
    for (name, upstream, reuse) in [(APP_HOST, "app", " reuseport"), (UPLOAD_HOST, "upload", "")] {
        let _ = writeln!(
            out,
            "    server {{\n        listen 127.0.0.1:{TLS_PORT} ssl http2{reuse};\n\
             \x20       server_name {name};\n\
             \x20       location / {{ proxy_pass http://{upstream}; }}\n    }}"
        );
    }
    out.push_str("}\n");
    out
}

/// What a kokoa-edge needs to know to reach kokoa-origin.
#[derive(Clone, Debug)]
pub struct KokoaPlan {
    /// Edge WireGuard private key (base64).
    pub edge_key: String,
    /// Edge public key (base64).
    pub edge_public: String,
    /// Origin private key (base64).
    pub origin_key: String,
    /// Origin public key (base64).
    pub origin_public: String,
    /// The edge's UDP address on the veth.
    pub edge_udp: SocketAddrV4,
    /// The origin's UDP address on the veth.
    pub origin_udp: SocketAddrV4,
}

/// Inner tunnel addresses (netstack only: they never reach a kernel interface).
const KOKOA_EDGE_INNER: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const KOKOA_ORIGIN_INNER: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);

/// Request rate limits for the issue-4 overhead measurement: `[limits] rate/burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second per client address.
    pub rate: u64,
    /// Burst.
    pub burst: u64,
}

impl RateLimit {
    /// Limits no benchmark load reaches (the edge's maximum rate, 10^6 requests/s per client):
    /// the limiter runs on every request but never refuses.
    pub const UNREACHABLE: RateLimit = RateLimit {
        rate: 1_000_000,
        burst: 1_000_000,
    };
}

/// kokoa-edge's TOML: TLS on 127.0.0.1:[`TLS_PORT`], routes for both host names.
pub fn kokoa_edge(plan: &KokoaPlan, tls: &TlsFiles, limits: Option<RateLimit>) -> String {
    let mut out = format!(
        "[edge]\nhttps = \"127.0.0.1:{TLS_PORT}\"\nhttp = \"127.0.0.1:8080\"\n\
         admin = \"127.0.0.1:9090\"\ndrain_timeout = 1\nupstream_keepalive = {UPSTREAM_POOL}\n\n\
         [tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n\n\
         [[origins]]\nname = \"origin\"\npublic_key = \"{}\"\naddress = \"{KOKOA_EDGE_INNER}\"\n\
         origin_address = \"{KOKOA_ORIGIN_INNER}\"\n\n\
         [[routes]]\nhost = \"{APP_HOST}\"\norigin = \"origin\"\nport = {APP_PORT}\n\n\
         [[routes]]\nhost = \"{UPLOAD_HOST}\"\norigin = \"origin\"\nport = {SINK_PORT}\n\n",
        plan.edge_key, plan.edge_udp, plan.origin_public
    );
    // Every load comes from 127.0.0.1: lift the per-client connection cap (default 256) so
    // 10,000 idle connections are admitted, as they are by Nginx. The global cap stays.
    out.push_str("[limits]\nconnections_per_client = 0\n");
    if let Some(limits) = limits {
        let _ = writeln!(out, "rate = {}.0\nburst = {}", limits.rate, limits.burst);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "[tls]\ndefault = \"{APP_HOST}\"\n\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"",
        tls.cert.display(),
        tls.key.display()
    );
    out
}

/// kokoa-origin's TOML: dials the edge, services for the app and the sink on loopback.
pub fn kokoa_origin(plan: &KokoaPlan) -> String {
    format!(
        "[origin]\nadmin = \"127.0.0.1:9091\"\naddress = \"{KOKOA_ORIGIN_INNER}\"\ndrain_timeout = 1\n\n\
         [tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n\n\
         [[edges]]\nname = \"edge\"\npublic_key = \"{}\"\nendpoint = \"{}\"\n\
         address = \"{KOKOA_EDGE_INNER}\"\nkeepalive = 25\n\n\
         [[services]]\nname = \"app\"\nport = {APP_PORT}\nlocal = \"127.0.0.1:{APP_PORT}\"\n\n\
         [[services]]\nname = \"upload\"\nport = {SINK_PORT}\nlocal = \"127.0.0.1:{SINK_PORT}\"\n",
        plan.origin_key, plan.origin_udp, plan.edge_public, plan.edge_udp
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            cert: "/tmp/b/cert.pem".into(),
            key: "/tmp/b/key.pem".into(),
        }
    }

    #[test]
    fn nginx_front_proxies_both_hosts_with_keepalive_and_shared_tls() {
        let conf = nginx_front(
            Path::new("/tmp/b/front"),
            &tls(),
            "10.250.3.2:8080".parse().expect("addr"),
            "10.250.3.2:8081".parse().expect("addr"),
        );
        for needle in [
            "upstream app { server 10.250.3.2:8080; keepalive 128; }",
            "upstream upload { server 10.250.3.2:8081; keepalive 16; }",
            "listen 127.0.0.1:8443 ssl http2 reuseport;",
            "server_name bench.test;",
            "server_name upload.bench.test;",
            "ssl_certificate /tmp/b/cert.pem;",
            "proxy_set_header Connection \"\";",
            "pid /tmp/b/front/nginx.pid;",
            "daemon off;",
        ] {
            assert!(conf.contains(needle), "missing {needle:?} in\n{conf}");
        }
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn nginx_app_serves_the_root() {
        let conf = nginx_app(Path::new("/tmp/b/app"), Path::new("/tmp/b/www"));
        assert!(conf.contains("listen 8080 reuseport;"));
        assert!(conf.contains("root /tmp/b/www;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn nginx_relay_loads_the_stream_module_and_relays_to_loopback() {
        let conf = nginx_relay(Path::new("/tmp/b/relay"), "10.250.3.2".parse().expect("ip"));
        assert!(conf
            .starts_with("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;"));
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("listen 10.250.3.2:8090;\n        proxy_pass 127.0.0.1:8080;"));
        assert!(conf.contains("listen 10.250.3.2:8091;\n        proxy_pass 127.0.0.1:8081;"));
        assert!(!conf.contains("http {"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    fn plan() -> KokoaPlan {
        KokoaPlan {
            edge_key: "EK".into(),
            edge_public: "EP".into(),
            origin_key: "OK".into(),
            origin_public: "OP".into(),
            edge_udp: "10.250.3.1:51820".parse().expect("addr"),
            origin_udp: "10.250.3.2:51820".parse().expect("addr"),
        }
    }

    #[test]
    fn kokoa_configs_point_at_each_other() {
        let edge = kokoa_edge(&plan(), &tls(), None);
        assert!(edge.contains("https = \"127.0.0.1:8443\""));
        assert!(edge.contains("upstream_keepalive = 256\n"));
        assert!(edge.contains("listen = \"10.250.3.1:51820\""));
        assert!(edge.contains("public_key = \"OP\""));
        assert!(edge.contains("host = \"upload.bench.test\"\norigin = \"origin\"\nport = 8081"));
        assert!(edge.contains("default = \"bench.test\""));
        assert!(edge.contains("[limits]\nconnections_per_client = 0\n\n"));
        assert!(!edge.contains("rate ="));
        let limited = kokoa_edge(&plan(), &tls(), Some(RateLimit::UNREACHABLE));
        assert!(limited
            .contains("[limits]\nconnections_per_client = 0\nrate = 1000000.0\nburst = 1000000\n"));

        let origin = kokoa_origin(&plan());
        assert!(origin.contains("endpoint = \"10.250.3.1:51820\""));
        assert!(origin.contains("public_key = \"EP\""));
        assert!(origin.contains("local = \"127.0.0.1:8081\""));
    }
}
