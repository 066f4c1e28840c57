//! Any bytes a peer on the management network sends to the coordinator's HTTP port, through
//! the same connection handling as the listener (hyper with the API's header and body clocks,
//! the router, the token check). Without the token nothing but `/health` may succeed, the token
//! never appears in an answer, and no input makes the coordinator fail with a 500.
#![no_main]

use cerana_coordinator::http::{router, serve_connection, ConnectionLimits};
use cerana_coordinator::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "fuzz-secret-token-7f3a9c2e51d84b06";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = runtime.block_on(async {
            let mut config = Config::new(std::env::temp_dir().join("cerana-fuzz-http.sock"));
            config.token = Some(TOKEN.into());
            router(cerana_coordinator::core::Core::new(config))
        });
        Fixture { runtime, app }
    })
}

/// Status codes of the responses in `raw`, in order.
fn statuses(raw: &[u8]) -> Vec<u16> {
    raw.windows(12)
        .filter(|w| w.starts_with(b"HTTP/1.1 ") && w[9..12].iter().all(u8::is_ascii_digit))
        .filter_map(|w| std::str::from_utf8(&w[9..12]).ok()?.parse().ok())
        .collect()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let limits =
        ConnectionLimits { header_timeout: Duration::from_millis(200), body_idle_timeout: Duration::from_millis(200) };
    let out = f.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer = "10.9.8.7:40000".parse().unwrap();
        let connection = tokio::spawn(serve_connection(f.app.clone(), server, peer, limits));
        let mut out = Vec::new();
        let exchange = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let _ = client.read_to_end(&mut out).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        connection.abort();
        out
    });
    assert_eq!(count(&out, TOKEN.as_bytes()), 0, "the token was served");
    let statuses = statuses(&out);
    assert!(!statuses.contains(&500), "500 for {:?}: {}", String::from_utf8_lossy(data), String::from_utf8_lossy(&out));
    let successes = statuses.iter().filter(|s| (200..300).contains(*s)).count();
    assert!(
        successes <= count(data, b"/health"),
        "answered {successes} success(es) without the token to {:?}: {}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&out)
    );
});
