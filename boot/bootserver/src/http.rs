//! HTTP: iPXE scripts, kernel and initrd by content hash (with Range), health, boot events,
//! node check-in.

use crate::config::{BootAction, Config, HttpLimits};
use crate::dhcp_control::DhcpControl;
use crate::events::{EventLog, EventSource};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use cerana_protocol::boot_wire::{CheckIn, ImageManifest};
use cerana_protocol::error::{ErrorCode, TaskError};
use cerana_protocol::tasks::boot::{BootEventKind, BootEventsArgs, MacAddr};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const CHAIN_TEMPLATE: &str = include_str!("../../ipxe/chain.ipxe");
const BOOT_TEMPLATE: &str = include_str!("../../ipxe/boot.ipxe");
const DISK_TEMPLATE: &str = include_str!("../../ipxe/disk.ipxe");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image}: cannot read {path}: {source}")]
    Read { image: String, path: String, source: std::io::Error },
}

/// A file served by its SHA-256.
#[derive(Debug, Clone)]
pub struct Blob {
    pub bytes: Bytes,
    pub sha256: String,
}

impl Blob {
    pub fn new(bytes: Bytes) -> Self {
        let sha256 = sha256_hex(&bytes);
        Blob { bytes, sha256 }
    }
}

/// The file's bytes, mapped rather than read: an image on the node's tmpfs is already in RAM,
/// so the mapping shares those pages instead of holding a second 31 MB copy, and loading costs
/// no copy at all (a restarted bootserver serves again at once).
fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and private to this process. What memmap2 cannot rule
    // out is the file being truncated while mapped (reads past the new end fault with SIGBUS).
    // The images are written once before the bootserver starts (by boot-image or boot-join)
    // and replaced, if ever, by rename, which leaves this mapping on the old inode; a crash
    // from an in-place truncation would be restarted by init onto the new file.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where [`ImageStore::load`] keeps the hashes it worked out, in the state directory.
pub const HASH_CACHE_FILE: &str = "blob-hashes.json";

/// What identifies one version of a file's content without reading it: any write changes its
/// ctime (which nothing can set back), a replacement its inode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_ns: i128,
}

impl FileIdentity {
    /// The kernel stamps ctime from a clock that lags by up to a tick: a write this long after
    /// a read began still gets a ctime later than one stamped this long before it.
    const SETTLE_NS: i128 = 20_000_000;

    fn now_ns() -> i128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
    }

    fn settled_before(&self, read_at_ns: i128) -> bool {
        self.ctime_ns + Self::SETTLE_NS < read_at_ns
    }

    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CachedHash {
    path: std::path::PathBuf,
    identity: FileIdentity,
    sha256: String,
}

/// SHA-256 of files by their identity; an unreadable or malformed cache is an empty one.
#[derive(Debug, Default)]
struct HashCache {
    entries: Vec<CachedHash>,
}

impl HashCache {
    /// At most this many files: one bootserver serves a few images.
    const MAX_ENTRIES: usize = 64;

    fn read(path: &Path) -> Self {
        let entries = std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        HashCache { entries }
    }

    fn get(&self, path: &Path, identity: &FileIdentity) -> Option<String> {
        let valid = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        self.entries
            .iter()
            .find(|e| e.path == path && &e.identity == identity && valid(&e.sha256))
            .map(|e| e.sha256.clone())
    }

    fn put(&mut self, path: &Path, identity: FileIdentity, sha256: String) {
        self.entries.retain(|e| e.path != path);
        self.entries.push(CachedHash { path: path.to_path_buf(), identity, sha256 });
        let excess = self.entries.len().saturating_sub(Self::MAX_ENTRIES);
        self.entries.drain(..excess);
    }

    /// Written whole and renamed into place: a crash leaves the old cache or the new one.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.entries).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// A bootable image: kernel, initrd and its extra command line.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: Blob,
    pub initrd: Blob,
    pub cmdline: String,
}

/// Images by name, their files by hash.
#[derive(Debug, Default)]
pub struct ImageStore {
    images: HashMap<String, Image>,
    blobs: HashMap<String, Blob>,
}

impl ImageStore {
    /// Reads every configured image into memory (the node runs from RAM; the files already are).
    /// Hashes already worked out for the same files (`state_dir/blob-hashes.json`) are reused:
    /// under TCG hashing an image takes seconds, and a restarted bootserver should serve again
    /// at once.
    pub fn load(config: &Config) -> Result<Self, ImageError> {
        let mut store = ImageStore::default();
        let cache_path = config.state_dir.as_ref().map(|d| d.join(HASH_CACHE_FILE));
        let mut cache = cache_path.as_deref().map(HashCache::read).unwrap_or_default();
        for (name, image) in &config.images {
            let mut read = |path: &Path| {
                let error = |source| ImageError::Read { image: name.clone(), path: path.display().to_string(), source };
                let identity = FileIdentity::of(path).map_err(error)?;
                let read_at = FileIdentity::now_ns();
                let bytes = map_file(path).map_err(error)?;
                let sha256 = match cache.get(path, &identity) {
                    Some(known) => known,
                    None => {
                        let hashed = sha256_hex(&bytes);
                        // Only a file that had settled before it was read, and did not change
                        // while it was, is remembered by its identity.
                        if identity.settled_before(read_at) && FileIdentity::of(path).ok().as_ref() == Some(&identity) {
                            cache.put(path, identity, hashed.clone());
                        }
                        hashed
                    }
                };
                Ok(Blob { bytes, sha256 })
            };
            let image =
                Image { kernel: read(&image.kernel)?, initrd: read(&image.initrd)?, cmdline: image.cmdline.clone() };
            tracing::info!(image = %name, kernel = %image.kernel.sha256, initrd = %image.initrd.sha256, "image loaded");
            store.insert(name, image);
        }
        if let Some(path) = &cache_path {
            if let Err(e) = cache.write(path) {
                tracing::warn!(path = %path.display(), "cannot keep the image hashes: {e}");
            }
        }
        Ok(store)
    }

    pub fn insert(&mut self, name: &str, image: Image) {
        self.blobs.insert(image.kernel.sha256.clone(), image.kernel.clone());
        self.blobs.insert(image.initrd.sha256.clone(), image.initrd.clone());
        self.images.insert(name.to_string(), image);
    }

    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.get(name)
    }
}

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct HttpState {
    pub config: Config,
    /// `http://<server>[:port]`, no trailing slash.
    pub base: String,
    pub server_ip: Ipv4Addr,
    pub images: ImageStore,
    pub events: Arc<EventLog>,
    pub dhcp: Arc<DhcpControl>,
    /// The one-time tokens in the boot scripts served, redeemed at check-in (with a CA only).
    pub join_tokens: Arc<crate::join_tokens::JoinTokens>,
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/boot.ipxe", get(boot_script))
        .route("/images/{hash}/{file}", get(image_file))
        .route("/events", get(events))
        .route("/machines", get(machines))
        .route("/leases", get(leases))
        .route("/ca.crt", get(cluster_ca))
        .route("/checkin", post(checkin))
        .with_state(state)
}

async fn health(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok", "images": state.images.images.len() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptQuery {
    mac: Option<String>,
    uuid: Option<String>,
    arch: Option<String>,
}

/// `cerana.cluster_ips=`: the configured addresses, or this server's own.
pub fn cluster_ips(config: &Config, server_ip: Ipv4Addr) -> String {
    if config.boot.cluster_ips.is_empty() {
        server_ip.to_string()
    } else {
        config.boot.cluster_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(",")
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |out, (k, v)| out.replace(&format!("{{{{{k}}}}}"), v))
}

fn ipxe(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

async fn boot_script(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<ScriptQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return text(StatusCode::BAD_REQUEST, "#!ipxe\necho bad query: expected mac, uuid, arch\nexit 1\n".into());
    };
    let Some(mac_text) = q.mac.filter(|m| !m.is_empty()) else {
        return ipxe(render(CHAIN_TEMPLATE, &[("base", &state.base)]));
    };
    let Ok(mac) = mac_text.parse::<MacAddr>() else {
        return text(StatusCode::BAD_REQUEST, format!("#!ipxe\necho invalid MAC address {mac_text:?}\nexit 1\n"));
    };
    // iPXE sends an empty ${uuid} when the firmware has none; a malformed one is ignored too.
    let uuid = q.uuid.as_deref().and_then(|u| u.parse::<uuid::Uuid>().ok());
    let _ = q.arch;
    let (action, machine_cmdline) = state.config.decide(Some(mac), uuid);
    let mac_s = mac.to_string();
    match action {
        BootAction::Disk => {
            state.events.record(EventSource::Peer(peer.ip()), mac, BootEventKind::HttpScript { image: None });
            ipxe(render(DISK_TEMPLATE, &[("mac", &mac_s)]))
        }
        BootAction::Image(name) => {
            let Some(image) = state.images.image(name) else {
                tracing::error!(%mac, image = %name, "the decided image is not loaded");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("#!ipxe\necho image {name} is not available on this server\nexit 1\n"),
                );
            };
            state.events.record(
                EventSource::Peer(peer.ip()),
                mac,
                BootEventKind::HttpScript { image: Some(name.clone()) },
            );
            let cluster_ips = cluster_ips(&state.config, state.server_ip);
            // Only a server that signs certificates, or whose check-ins go to one that does
            // (its tokens in the cluster store), hands out tokens to redeem for one.
            let now = crate::events::now_ms() / 1000;
            let leases = state.dhcp.leases_off_runtime().await;
            let leased = leases.into_iter().find(|l| l.mac == mac && l.is_active(now)).map(|l| l.ip);
            let join_token = match (&state.config.ca_dir, &state.config.join_server) {
                (None, None) => None,
                _ => match state.join_tokens.mint(mac, uuid, leased, now).await {
                    Ok(token) => Some(format!("cerana.join_token={}", token.reveal())),
                    Err(e) => {
                        tracing::error!(%mac, error = %e, "no join token for this boot script");
                        return text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "#!ipxe\necho this server cannot mint a join token now\nexit 1\n".into(),
                        );
                    }
                },
            };
            let mgmt = state.dhcp.mgmt_settings_off_runtime(mac).await;
            let cmdline = [
                state.config.boot.cmdline.clone(),
                join_token.unwrap_or_default(),
                format!("cerana.boot_server={}/", state.base),
                state.config.join_server.as_ref().map(|j| format!("cerana.join_server={j}/")).unwrap_or_default(),
                format!("cerana.cluster_ips={cluster_ips}"),
                format!("cerana.mgmt_mac={mac_s}"),
                format!("cerana.initrd_hash=sha256-{}", image.initrd.sha256),
                mgmt.unwrap_or_default(),
                image.cmdline.clone(),
                machine_cmdline.to_string(),
            ]
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
            ipxe(render(
                BOOT_TEMPLATE,
                &[
                    ("base", &state.base),
                    ("mac", &mac_s),
                    ("image", name),
                    ("kernel_hash", &image.kernel.sha256),
                    ("initrd_hash", &image.initrd.sha256),
                    ("cmdline", &cmdline),
                ],
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageQuery {
    mac: Option<String>,
}

/// A parsed `Range` header against a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range (absent, several ranges, another unit): the whole body.
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// RFC 9110 14.1: one `bytes=` range; anything else is answered with the whole body.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    let parse =
        |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() { s.parse::<u64>().ok() } else { None };
    match (start.is_empty(), end.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match parse(end) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part(len.saturating_sub(n), len - 1),
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(first) = parse(start) else { return RangeRequest::Full };
            let last = if end.is_empty() { Some(u64::MAX) } else { parse(end) };
            match last {
                None => RangeRequest::Full,
                Some(last) if last < first => RangeRequest::Full,
                Some(_) if first >= len => RangeRequest::Unsatisfiable,
                Some(last) => RangeRequest::Part(first, last.min(len - 1)),
            }
        }
    }
}

async fn image_file(
    State(state): State<Arc<HttpState>>,
    UrlPath((hash, file)): UrlPath<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<ImageQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Some(hex) = hash.strip_prefix("sha256-").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return text(StatusCode::NOT_FOUND, "expected /images/sha256-<64 hex digits>/<file>\n".into());
    };
    let hex = hex.to_ascii_lowercase();
    if file == "manifest" {
        // Self-replication: what a node booted from this initrd needs to fetch.
        return match state.images.images.values().find(|i| i.initrd.sha256 == hex) {
            Some(image) => axum::Json(ImageManifest {
                kernel: format!("sha256-{}", image.kernel.sha256),
                initrd: format!("sha256-{}", image.initrd.sha256),
                cmdline: image.cmdline.clone(),
            })
            .into_response(),
            None => text(StatusCode::NOT_FOUND, format!("no image with initrd sha256-{hex} on this server\n")),
        };
    }
    let Some(blob) = state.images.blobs.get(&hex) else {
        return text(StatusCode::NOT_FOUND, format!("no file with hash sha256-{hex} on this server\n"));
    };
    let kind = match file.as_str() {
        "vmlinuz" | "kernel" | "bzImage" => true,
        "initrd" | "initrd.img" => false,
        _ => return text(StatusCode::NOT_FOUND, format!("unknown file name {file:?}: use vmlinuz or initrd\n")),
    };
    let len = blob.bytes.len() as u64;
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), len);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"sha256-{}\"", blob.sha256))
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    let body = match range {
        RangeRequest::Full => blob.bytes.clone(),
        RangeRequest::Part(first, last) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
            blob.bytes.slice(first as usize..=last as usize)
        }
        RangeRequest::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    let mac =
        query.ok().and_then(|Query(q)| q.mac).and_then(|m| m.parse::<MacAddr>().ok()).or_else(|| match peer.ip() {
            IpAddr::V4(ip) => state.events.mac_for_ip(ip),
            IpAddr::V6(_) => None,
        });
    if let Some(mac) = mac {
        let (hash, bytes) = (format!("sha256-{}", blob.sha256), body.len() as u64);
        state.events.record(
            EventSource::Peer(peer.ip()),
            mac,
            if kind { BootEventKind::HttpKernel { hash, bytes } } else { BootEventKind::HttpInitrd { hash, bytes } },
        );
    }
    builder
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    mac: Option<String>,
    limit: Option<u32>,
}

async fn events(
    State(state): State<Arc<HttpState>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return text(StatusCode::BAD_REQUEST, "query: mac=<MAC>&limit=<N>\n".into());
    };
    let mac = match q.mac.map(|m| m.parse::<MacAddr>()).transpose() {
        Ok(mac) => mac,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    axum::Json(state.events.events(&BootEventsArgs { mac, limit: q.limit })).into_response()
}

async fn machines(State(state): State<Arc<HttpState>>) -> Response {
    axum::Json(state.events.machines()).into_response()
}

async fn leases(State(state): State<Arc<HttpState>>) -> Response {
    axum::Json(state.dhcp.leases_off_runtime().await).into_response()
}

/// The cluster CA's certificate (public: what every client of the cluster trusts). Fetched
/// over plain HTTP, it is worth what its fingerprint is: check it against the `cluster CA
/// sha256=` the bootstrap node's console shows.
async fn cluster_ca(State(state): State<Arc<HttpState>>) -> Response {
    let Some(dir) = &state.config.ca_dir else {
        return json_error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "this boot server holds no cluster CA");
    };
    match std::fs::read_to_string(dir.join(cerana_pki::CA_CERT)) {
        Ok(pem) => ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the cluster CA is not made yet")
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, e.to_string()),
    }
}

/// A JSON error `{"code": ..., "message": ...}` with `status`.
fn json_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, axum::Json(TaskError::new(code, message))).into_response()
}

async fn checkin(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let limits = &state.config.http_limits;
    let read = axum::body::to_bytes(request.into_body(), limits.max_body_bytes);
    let body = match tokio::time::timeout(Duration::from_secs(limits.body_timeout_secs), read).await {
        Err(_) => return json_error(StatusCode::REQUEST_TIMEOUT, ErrorCode::Timeout, "request body too slow"),
        Ok(Err(e)) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::FrameTooLarge,
                format!("request body refused: {e}"),
            )
        }
        Ok(Ok(body)) => body,
    };
    // The host name is checked here too (RFC 1123, cerana_protocol::boot_wire::Hostname): no
    // control characters reach the timeline, a terminal or a log.
    let checkin: CheckIn = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, error = ?e.to_string(), "check-in refused");
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidArgument,
                format!("expected {{\"mac\": ..., \"hostname\"?: ..., \"ip\"?: ..., \"public_key\"?: ...}}: {e}"),
            );
        }
    };
    let ip = checkin.ip.or(match peer.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    });
    let source = EventSource::Peer(peer.ip());
    let hostname = checkin.hostname.clone().map(String::from);
    state.events.record(source, checkin.mac, BootEventKind::CheckedIn { hostname, ip });
    // A boot server without the cluster CA (a replica) takes the check-in and issues nothing.
    let (Some(public_key), Some(ca_dir)) = (&checkin.public_key, &state.config.ca_dir) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let leases = state.dhcp.leases_off_runtime().await;
    match crate::certificates::issue(ca_dir, &state.join_tokens, &leases, peer.ip(), &checkin, public_key).await {
        Ok((name, reply)) => {
            state.events.record(source, checkin.mac, BootEventKind::CertificateIssued { name });
            axum::Json(reply).into_response()
        }
        Err(refusal) => {
            use crate::certificates::Refusal;
            let reason = refusal.to_string();
            tracing::warn!(%peer, mac = %checkin.mac, reason, "node certificate refused");
            state.events.record(source, checkin.mac, BootEventKind::CertificateRefused { reason: reason.clone() });
            let (status, code) = match refusal {
                Refusal::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
                Refusal::Malformed(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument),
                Refusal::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::PermissionDenied),
                Refusal::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Failed),
            };
            json_error(status, code, reason)
        }
    }
}

/// Serves `router` on `listener` with the configured bounds. When `max_connections` are open,
/// new ones wait in the kernel's backlog (iPXE cannot retry a 503); a source already holding
/// `max_connections_per_source` is answered 503 and closed at once, so one client cannot keep
/// the other machines from their kernels.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, limits: HttpLimits) -> std::io::Result<()> {
    use cerana_netlimits::{accept_admitted, busy_http_response, Admission, ConnectionLimits, DescriptorBudget};
    use hyper_util::rt::{TokioIo, TokioTimer};
    let budget = DescriptorBudget::of_this_process();
    let [total] = budget.fit([limits.max_connections]);
    let caps = ConnectionLimits { total: limits.max_connections, per_source: limits.max_connections_per_source }
        .shrunk_to(total);
    if caps.total < limits.max_connections {
        tracing::warn!(soft_limit = budget.soft_limit, ?caps, "RLIMIT_NOFILE is too low for http_limits: lowered them");
    }
    let admission = Admission::new("bootserver HTTP", caps);
    loop {
        admission.until_room().await;
        let (stream, peer, permit) = accept_admitted(&listener, &admission, |r| Some(busy_http_response(r))).await;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
                .max_buf_size(limits.max_header_bytes)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(Duration::from_secs(limits.max_connection_secs), conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection ended with an error"),
                Err(_) => tracing::info!(%peer, "HTTP connection closed: longer than max_connection_secs"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hashes_are_kept_for_unchanged_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initrd, state) = (dir.path().join("vmlinuz"), dir.path().join("initrd"), dir.path().join("state"));
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::fs::write(&initrd, b"initrd bytes").unwrap();
        let toml = format!(
            "interface = \"lo\"\ntftp_root = {:?}\nstate_dir = {:?}\n[dhcp]\nmode = \"off\"\n[dhcp.pool]\nnet = \"10.0.0.0/24\"\nrange = [\"10.0.0.10\", \"10.0.0.20\"]\n[boot]\ndefault = {{ image = \"c\" }}\n[images.c]\nkernel = {:?}\ninitrd = {:?}\n",
            dir.path(), state, kernel, initrd
        );
        let config_path = dir.path().join("bootserver.toml");
        std::fs::write(&config_path, toml).unwrap();
        let config = Config::load(&config_path).unwrap();
        // Too fresh to be remembered: hashed, not cached.
        let fresh = ImageStore::load(&config).unwrap();
        assert_eq!(fresh.image("c").unwrap().kernel.sha256, sha256_hex(b"kernel bytes"));
        assert!(HashCache::read(&state.join(HASH_CACHE_FILE)).entries.is_empty());
        std::thread::sleep(Duration::from_millis(50));
        ImageStore::load(&config).unwrap();
        let cache_file = state.join(HASH_CACHE_FILE);
        let mut cache = HashCache::read(&cache_file);
        assert_eq!(cache.entries.len(), 2);
        // A restart takes the remembered hash without hashing (shown by a planted one).
        let planted = "ab".repeat(32);
        cache.entries.iter_mut().find(|e| e.path == kernel).unwrap().sha256 = planted.clone();
        cache.write(&cache_file).unwrap();
        assert_eq!(ImageStore::load(&config).unwrap().image("c").unwrap().kernel.sha256, planted);
        // A file written since is hashed again, whatever the cache says.
        std::fs::write(&kernel, b"kernel bytes, new").unwrap();
        let reloaded = ImageStore::load(&config).unwrap();
        assert_eq!(reloaded.image("c").unwrap().kernel.sha256, sha256_hex(b"kernel bytes, new"));
        // A cache that is not JSON is an empty one.
        std::fs::write(&cache_file, b"garbage").unwrap();
        assert_eq!(ImageStore::load(&config).unwrap().image("c").unwrap().initrd.sha256, sha256_hex(b"initrd bytes"));
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Part(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=99999999999999999999-"), 10), Full);
    }

    fn state() -> Arc<HttpState> {
        state_with(toml::from_str("interface = \"lo\"\n[dhcp]\nmode = \"off\"\n").unwrap(), ImageStore::default())
    }

    fn state_with(config: Config, images: ImageStore) -> Arc<HttpState> {
        let events = Arc::new(EventLog::new());
        let boot = crate::dhcp::BootFiles::new(&config.boot, Ipv4Addr::LOCALHOST, 80);
        let (dhcp, _) = DhcpControl::new("lo".into(), Ipv4Addr::LOCALHOST, None, None, boot, events.clone());
        Arc::new(HttpState {
            config,
            base: "http://127.0.0.1".into(),
            server_ip: Ipv4Addr::LOCALHOST,
            images,
            events,
            dhcp: Arc::new(dhcp),
            join_tokens: Arc::new(crate::join_tokens::JoinTokens::load(None, 600)),
        })
    }

    #[tokio::test]
    async fn boot_scripts_carry_a_fresh_join_token_where_certificates_are_issued() {
        let script = |state: Arc<HttpState>| async move {
            let uri = "/boot.ipxe?mac=52-54-00-c1-00-02&uuid=c3a00002-0000-4000-8000-000000000000&arch=0";
            let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
            let response = send(&state, request, [10, 0, 0, 2]).await;
            assert_eq!(response.status(), StatusCode::OK);
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            String::from_utf8(body.to_vec()).unwrap()
        };
        let images = || {
            let mut images = ImageStore::default();
            let blob = |b: &'static [u8]| crate::http::Blob::new(bytes::Bytes::from_static(b));
            images.insert(
                "cerana",
                crate::http::Image { kernel: blob(b"k"), initrd: blob(b"i"), cmdline: String::new() },
            );
            images
        };
        let text = "interface = \"lo\"\n[dhcp]\nmode = \"off\"\n[boot]\ndefault = { image = \"cerana\" }\n";
        let without_ca: Config = toml::from_str(text).unwrap();
        let out = script(state_with(without_ca.clone(), images())).await;
        assert!(out.contains("kernel ") && !out.contains("cerana.join_token"), "{out}");

        let with_ca = Config { ca_dir: Some("/nonexistent".into()), ..without_ca };
        let state = state_with(with_ca, images());
        let token = |out: &str| {
            let at = out.find("cerana.join_token=").expect("a join token") + "cerana.join_token=".len();
            out[at..].split_whitespace().next().unwrap().to_string()
        };
        let (first, second) = (token(&script(state.clone()).await), token(&script(state.clone()).await));
        assert_ne!(first, second, "each script its own token");
        let mac = "52:54:00:c1:00:02".parse().unwrap();
        let uuid = Some("c3a00002-0000-4000-8000-000000000000".parse().unwrap());
        let who = crate::join_tokens::Redeemer { mac, uuid, public_key: "04aa" };
        let now = crate::events::now_ms() / 1000;
        assert!(state.join_tokens.check(Some(&first), &who, now).await.is_err(), "the newer script replaced it");
        state.join_tokens.check(Some(&second), &who, now).await.expect("bound to the machine that asked");
        assert!(!script(state.clone()).await.contains("cerana.join_server"));

        // A replica: its boot scripts send the check-in to the CA's server, with a token it
        // recorded in the cluster store; no store, no token (nobody could redeem it).
        let store = Arc::new(crate::join_store::MemoryJoinStore::default());
        let replica = Config { ca_dir: None, join_server: Some("http://10.0.0.1".into()), ..state.config.clone() };
        let mut replica_state = Arc::into_inner(state_with(replica, images())).unwrap();
        replica_state.join_tokens =
            Arc::new(crate::join_tokens::JoinTokens::load(None, 600).with_store(store.clone(), false));
        let replica_state = Arc::new(replica_state);
        let out = script(replica_state.clone()).await;
        assert!(out.contains(" cerana.join_server=http://10.0.0.1/ "), "{out}");
        let issuer = crate::join_tokens::JoinTokens::load(None, 600).with_store(store.clone(), true);
        issuer.check(Some(&token(&out)), &who, now).await.expect("the CA's server finds it in the store");
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let uri = "/boot.ipxe?mac=52-54-00-c1-00-02&arch=0";
        let response =
            send(&replica_state, Request::builder().uri(uri).body(Body::empty()).unwrap(), [10, 0, 0, 2]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "iPXE tries again later");
    }

    #[tokio::test]
    async fn the_cluster_ca_certificate_is_public_and_nothing_else_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = "interface = \"lo\"\n[dhcp]\nmode = \"off\"\n";
        let get = |config: Config| async move {
            let request = Request::get("/ca.crt").body(axum::body::Body::empty()).unwrap();
            let response = send(&state_with(config, ImageStore::default()), request, [10, 0, 0, 5]).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let without: Config = toml::from_str(text).unwrap();
        assert_eq!(get(without.clone()).await.0, StatusCode::NOT_FOUND);
        let with = Config { ca_dir: Some(dir.path().join("ca")), ..without };
        assert_eq!(get(with.clone()).await.0, StatusCode::SERVICE_UNAVAILABLE, "not made yet");
        let ca = cerana_pki::ClusterCa::load_or_create(&dir.path().join("ca")).unwrap();
        let (status, pem) = get(with).await;
        assert_eq!((status, pem.as_str()), (StatusCode::OK, ca.cert_pem()));
        assert!(!pem.contains("PRIVATE"));
    }

    /// Sends `request` as if from `peer`.
    async fn send(state: &Arc<HttpState>, mut request: Request, peer: [u8; 4]) -> Response {
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from((peer, 4000))));
        tower::ServiceExt::oneshot(router(state.clone()), request).await.unwrap()
    }

    /// POSTs `body` to /checkin from 10.0.0.5; the status and the body as JSON (Null if none).
    async fn check_in(state: &Arc<HttpState>, body: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::post("/checkin").body(Body::from(body.to_string())).unwrap();
        let response = send(state, request, [10, 0, 0, 5]).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn check_ins_with_hostile_hostnames_are_refused_with_a_json_error() {
        let state = state();
        let (status, _) = check_in(&state, r#"{"mac":"52:54:00:00:00:01","hostname":"node-1.lab"}"#).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        for body in [
            r#"{"mac":"52:54:00:00:00:02","hostname":"\u001b]0;pwned\u0007\u001b[2J"}"#,
            r#"{"mac":"52:54:00:00:00:02","hostname":"a b"}"#,
            r#"{"mac":"52:54:00:00:00:02","hostname":"-a"}"#,
            r#"{"mac":"52:54:00:00:00:02","hostname":""}"#,
            r#"{"mac":"52:54:00:00:00:02","hostname":"a..b"}"#,
            r#"{"mac":"52:54:00:00:00:02","uptime":5}"#,
            r#"{"mac":"52:54:00:00:00:02""#,
        ] {
            let (status, error) = check_in(&state, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error["code"], "invalid_argument", "{body}: {error}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}: {error}");
        }
        let long = format!(r#"{{"mac":"52:54:00:00:00:02","hostname":"{}"}}"#, vec!["a".repeat(63); 5].join("."));
        assert_eq!(check_in(&state, &long).await.0, StatusCode::BAD_REQUEST);
        // Nothing of the refused ones was recorded.
        let mac: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        assert!(state.events.events(&BootEventsArgs { mac: Some(mac), limit: None }).events.is_empty());
    }

    #[tokio::test]
    async fn a_stale_check_in_address_no_longer_attributes_requests() {
        let mut state = state();
        let image = Image {
            kernel: Blob::new(Bytes::from_static(b"k")),
            initrd: Blob::new(Bytes::from_static(b"i")),
            cmdline: "".into(),
        };
        let kernel = format!("/images/sha256-{}/vmlinuz", image.kernel.sha256);
        Arc::get_mut(&mut state).unwrap().images.insert("cerana", image);
        for ip in ["10.0.0.66", "10.0.0.5"] {
            let (status, _) = check_in(&state, &format!(r#"{{"mac":"52:54:00:00:00:01","ip":"{ip}"}}"#)).await;
            assert_eq!(status, StatusCode::NO_CONTENT);
        }
        for peer in [[10, 0, 0, 66], [10, 0, 0, 5]] {
            let response = send(&state, Request::get(kernel.as_str()).body(Body::empty()).unwrap(), peer).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let events = state.events.events(&BootEventsArgs { mac: Some(mac), limit: None }).events;
        let kernels = events.iter().filter(|e| matches!(e.kind, BootEventKind::HttpKernel { .. })).count();
        assert_eq!(kernels, 1, "only the fetch from the machine's newest address is its: {events:?}");
    }

    #[test]
    fn templates_render() {
        let out = render(CHAIN_TEMPLATE, &[("base", "http://10.0.0.1")]);
        assert!(out.starts_with("#!ipxe\n"));
        assert!(out.contains("chain http://10.0.0.1/boot.ipxe?mac=${netX/mac:hexhyp}"));
        assert!(!out.contains("{{"));
    }
}
