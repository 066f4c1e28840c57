//! The HTTP listener under a flood of held connections: no root, loopback only. One client
//! holding more connections than the server serves at once must not keep other machines from
//! their boot script and kernel (the per-source cap; issue #15).

use bytes::Bytes;
use cerana_bootserver::config::{Config, HttpLimits};
use cerana_bootserver::dhcp::BootFiles;
use cerana_bootserver::dhcp_control::DhcpControl;
use cerana_bootserver::events::EventLog;
use cerana_bootserver::http::{router, serve, Blob, HttpState, Image, ImageStore};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many connections the flooding client holds: more than the default total cap (256).
const HELD: usize = 300;
/// How long a probe may take; the server answers in milliseconds when it serves at all.
const PROBE_DEADLINE: Duration = Duration::from_secs(6);

const CONFIG: &str = r#"
interface = "lo"
[dhcp]
mode = "off"
[images.cerana]
kernel = "/k"
initrd = "/i"
"#;

/// The real router and `serve` on 127.0.0.1, with one image; returns the address and the kernel's hash.
async fn start(limits: HttpLimits) -> (SocketAddr, String) {
    let mut config: Config = toml::from_str(CONFIG).expect("config");
    config.http_limits = limits.clone();
    let server_ip = Ipv4Addr::LOCALHOST;
    let events = Arc::new(EventLog::new());
    let boot = BootFiles::new(&config.boot, server_ip, 80);
    let (dhcp, _failures) = DhcpControl::new("lo".into(), server_ip, None, None, boot, events.clone());
    let kernel = Blob::new(Bytes::from(vec![7u8; 64 * 1024]));
    let kernel_hash = kernel.sha256.clone();
    let mut images = ImageStore::default();
    images.insert("cerana", Image { kernel, initrd: Blob::new(Bytes::from_static(b"initrd")), cmdline: String::new() });
    let listener = tokio::net::TcpListener::bind((server_ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let join_tokens = Arc::new(cerana_bootserver::join_tokens::JoinTokens::load(None, 600));
    let base = format!("http://{addr}");
    let state = Arc::new(HttpState { config, base, server_ip, images, events, dhcp: Arc::new(dhcp), join_tokens });
    tokio::spawn(serve(listener, router(state), limits));
    (addr, kernel_hash)
}

/// A connection to `server` from the loopback address `source` (127.0.0.0/8 is all local on
/// Linux, so each address is a distinct peer to the server).
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// `GET path` from `source`; the status line and body, or why there is none within the deadline.
fn probe(source: Ipv4Addr, server: SocketAddr, path: &str) -> Result<(String, Vec<u8>), String> {
    let mut tcp = connect_from(source, server).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(PROBE_DEADLINE)).map_err(|e| e.to_string())?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: boot\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).map_err(|e| format!("no answer to {path} within {PROBE_DEADLINE:?}: {e}"))?;
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no response head")?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, reply[split + 4..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holding_connections_does_not_starve_other_machines() {
    let (server, kernel_hash) = start(HttpLimits::default()).await;
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let machine = Ipv4Addr::LOCALHOST;
    tokio::task::spawn_blocking(move || {
        // Keep-alive requests that are answered and then held, as a browser or a script would.
        let mut held = Vec::new();
        for _ in 0..HELD {
            match connect_from(flooder, server) {
                Ok(mut tcp) => {
                    let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: boot\r\n\r\n");
                    held.push(tcp);
                }
                // The backlog may be full: the flood is as big as the server lets it be.
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (status, body) = probe(machine, server, "/health").expect("health");
        assert!(status.contains(" 200 "), "{status}");
        assert!(String::from_utf8_lossy(&body).contains("\"ok\""));
        let (status, body) = probe(machine, server, "/boot.ipxe?mac=52-54-00-00-00-09").expect("boot script");
        assert!(status.contains(" 200 "), "{status}");
        assert!(String::from_utf8_lossy(&body).contains(&kernel_hash));
        let (status, body) = probe(machine, server, &format!("/images/sha256-{kernel_hash}/vmlinuz")).expect("kernel");
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body.len(), 64 * 1024);
        assert!(started.elapsed() < 3 * PROBE_DEADLINE);
        drop(held);
    })
    .await
    .expect("the probes");
}
