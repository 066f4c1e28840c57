//! Self-replication: a node fetches the kernel and initrd it booted from its boot server, by
//! hash, checks them, and can then serve them itself (`cerana-bootserver fetch`).

use cerana_protocol::boot_wire::{CheckIn, CheckInReply, ImageManifest, Lease};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not sha256-<64 hex digits>")]
    BadHash(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: content has sha256-{got}, expected {want}")]
    Mismatch { url: String, got: String, want: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn check_hash(hash: &str) -> Result<&str, FetchError> {
    hash.strip_prefix("sha256-")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| FetchError::BadHash(hash.to_string()))
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

async fn get(client: &Client, url: &str) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
    let err = |message: String| FetchError::Http { url: url.to_string(), message };
    let uri: http::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
    let response = client.get(uri).await.map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("HTTP {}", response.status())));
    }
    Ok(response)
}

/// GETs `url` and decodes its JSON body of at most `limit` bytes.
async fn get_json<T: serde::de::DeserializeOwned>(client: &Client, url: &str, limit: usize) -> Result<T, FetchError> {
    use http_body_util::BodyExt;
    let err = |message: String| FetchError::Http { url: url.to_string(), message };
    let response = get(client, url).await?;
    let body = http_body_util::Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| err(format!("bad response: {e}")))
}

/// The leases another bootserver (`http://host[:port]`) holds, from its `/leases`.
pub async fn fetch_leases(server: &str) -> Result<Vec<Lease>, FetchError> {
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    get_json(&client, &format!("{}/leases", server.trim_end_matches('/')), 4 << 20).await
}

/// How a check-in went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckInError {
    /// The server answered with an error; `status` 503 means "ask again later".
    #[error("{url}: HTTP {status}: {message}")]
    Refused { url: String, status: u16, message: String },
    #[error(transparent)]
    Transport(#[from] FetchError),
}

/// Tells the boot server (`http://host[:port]`) this node is up: `POST /checkin`. The answer
/// carries the node's certificate when the check-in asked for one.
pub async fn check_in(server: &str, checkin: &CheckIn) -> Result<Option<CheckInReply>, CheckInError> {
    use http_body_util::BodyExt;
    let url = format!("{}/checkin", server.trim_end_matches('/'));
    let err = |message: String| FetchError::Http { url: url.clone(), message };
    let body = serde_json::to_vec(checkin).map_err(|e| err(e.to_string()))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::post(&url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| err(e.to_string()))?;
    let response = client.request(request).await.map_err(|e| err(e.to_string()))?;
    let status = response.status();
    // Certificates and error messages are small; a server sending more is not believed.
    let limited = http_body_util::Limited::new(response.into_body(), 64 << 10);
    let body = limited.collect().await.map_err(|e| err(e.to_string()))?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<cerana_protocol::TaskError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(CheckInError::Refused { url, status: status.as_u16(), message });
    }
    if status == hyper::StatusCode::NO_CONTENT || body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| err(format!("bad check-in answer: {e}")).into())
}

/// Downloads `url` into `path` (through a temporary file) and checks its SHA-256 is `want`.
async fn download(client: &Client, url: &str, want: &str, path: &Path) -> Result<u64, FetchError> {
    use http_body_util::BodyExt;
    let io = |source| FetchError::Io { path: path.to_path_buf(), source };
    let mut body = get(client, url).await?.into_body();
    let tmp = path.with_extension("part");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Http { url: url.to_string(), message: e.to_string() })?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            file.write_all(&data).map_err(io)?;
            len += data.len() as u64;
        }
    }
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if format!("sha256-{got}") != want {
        let _ = std::fs::remove_file(&tmp);
        return Err(FetchError::Mismatch { url: url.to_string(), got, want: want.to_string() });
    }
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(len)
}

/// Fetches the image whose initrd is `initrd_hash` from `server` (`http://host[:port]`) into
/// `dest/<initrd_hash>/{vmlinuz,initrd}`, both checked; returns that directory and the manifest.
pub async fn fetch(server: &str, initrd_hash: &str, dest: &Path) -> Result<(PathBuf, ImageManifest), FetchError> {
    check_hash(initrd_hash)?;
    let server = server.trim_end_matches('/');
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let url = format!("{server}/images/{initrd_hash}/manifest");
    let manifest: ImageManifest = get_json(&client, &url, 64 * 1024).await?;
    check_hash(&manifest.kernel)?;
    if manifest.initrd != initrd_hash {
        return Err(FetchError::Http { url, message: format!("manifest names initrd {}", manifest.initrd) });
    }
    let dir = dest.join(initrd_hash);
    std::fs::create_dir_all(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
    download(&client, &format!("{server}/images/{}/vmlinuz", manifest.kernel), &manifest.kernel, &dir.join("vmlinuz"))
        .await?;
    download(&client, &format!("{server}/images/{}/initrd", manifest.initrd), &manifest.initrd, &dir.join("initrd"))
        .await?;
    Ok((dir, manifest))
}
