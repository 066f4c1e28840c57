//! The `health` provider: checks that pass or fail within a timeout — a process's uptime (by
//! pid, cgroup or service), a file's existence, mode and size, a TCP connect with an optional
//! response regexp, an HTTP status. A check that ran answers a [`HealthReport`]; only arguments
//! that make no sense are errors. See README.md.

use bytes::Bytes;
use cerana_observe::procfs::{parse_process_stat, parse_uptime};
use cerana_observe::{cgroup_pids, ticks_per_second, ReadError};
use cerana_protocol::tasks::health::{
    FailReason, FileArgs, HealthCheck, HealthFile, HealthHttpStatus, HealthReport, HealthTcpResponse, HealthUptime,
    HttpStatusArgs, ProcessTarget, TcpResponseArgs, UptimeArgs, MAX_TCP_RESPONSE,
};
use cerana_protocol::tasks::metrics::{SERVICES_CGROUP, SERVICES_CGROUP_ENV};
use cerana_protocol::{ErrorCode, Task, TaskError};
use cerana_provider_sdk::Provider;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The arguments of a check make no sense; nothing was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidArgs(pub String);

impl From<InvalidArgs> for TaskError {
    fn from(e: InvalidArgs) -> Self {
        TaskError::new(ErrorCode::InvalidArgs, e.0)
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Runs checks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checker {
    proc_root: PathBuf,
    services_cgroup: PathBuf,
    http: HttpClient,
}

impl Checker {
    /// Checks against the running system; services' cgroups under `CERANA_SERVICES_CGROUP`
    /// or the default.
    pub fn system() -> Self {
        let services =
            std::env::var_os(SERVICES_CGROUP_ENV).map_or_else(|| PathBuf::from(SERVICES_CGROUP), PathBuf::from);
        Self::new("/proc", services)
    }

    /// Checks reading processes from `proc_root` and services' cgroups under `services_cgroup`.
    pub fn new(proc_root: impl Into<PathBuf>, services_cgroup: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), services_cgroup: services_cgroup.into(), http: http_client() }
    }

    /// Runs any check.
    pub async fn run(&self, check: &HealthCheck) -> Result<HealthReport, InvalidArgs> {
        match check {
            HealthCheck::Uptime(a) => self.uptime(a).await,
            HealthCheck::File(a) => self.file(a).await,
            HealthCheck::TcpResponse(a) => self.tcp_response(a).await,
            HealthCheck::HttpStatus(a) => self.http_status(a).await,
        }
    }

    pub async fn uptime(&self, args: &UptimeArgs) -> Result<HealthReport, InvalidArgs> {
        args.validate().map_err(InvalidArgs)?;
        let checker = self.clone();
        let args = args.clone();
        let timeout = args.timeout();
        Ok(timed(timeout, async move {
            tokio::task::spawn_blocking(move || checker.uptime_now(&args))
                .await
                .unwrap_or_else(|e| Err((FailReason::Io, format!("the check failed: {e}"))))
        })
        .await)
    }

    fn uptime_now(&self, args: &UptimeArgs) -> Outcome {
        let (what, pids) = match &args.target {
            ProcessTarget::Pid(pid) => (format!("process {pid}"), vec![*pid]),
            ProcessTarget::Cgroup(dir) => (format!("cgroup {dir}"), self.pids_in(Path::new(dir))?),
            ProcessTarget::Service(id) => (format!("service {id}"), self.pids_in(&self.services_cgroup.join(id))?),
        };
        let now = read_proc(&self.proc_root.join("uptime"))
            .and_then(|text| parse_uptime(&text).map_err(|e| (FailReason::Io, format!("/proc/uptime: {e}"))))?;
        let ticks = ticks_per_second();
        // The oldest live process: a service's first process, not a short-lived helper.
        let started = pids
            .iter()
            .filter_map(|pid| {
                let text = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
                parse_process_stat(&text).ok().filter(|s| !s.is_zombie())
            })
            .map(|s| s.start_ticks)
            .min()
            .ok_or_else(|| (FailReason::NotRunning, format!("{what} has no running process")))?;
        let uptime = Duration::from_secs_f64((now - started as f64 / ticks).max(0.0));
        let min = Duration::from_millis(args.min_uptime_ms);
        if uptime < min {
            return Err((
                FailReason::TooYoung,
                format!("{what} is up {:.1} s, less than {:.1} s", uptime.as_secs_f64(), min.as_secs_f64()),
            ));
        }
        Ok(format!("{what} is up {:.1} s", uptime.as_secs_f64()))
    }

    fn pids_in(&self, dir: &Path) -> Result<Vec<u32>, (FailReason, String)> {
        match cgroup_pids(dir) {
            Ok(pids) => Ok(pids),
            Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err((FailReason::NotRunning, format!("no cgroup {}", dir.display())))
            }
            Err(e) => Err((FailReason::Io, e.to_string())),
        }
    }

    pub async fn file(&self, args: &FileArgs) -> Result<HealthReport, InvalidArgs> {
        args.validate().map_err(InvalidArgs)?;
        let args = args.clone();
        Ok(timed(args.timeout(), async move {
            let metadata = match tokio::fs::metadata(&args.path).await {
                Ok(_) if args.not_exist => return Err((FailReason::Exists, format!("{} exists", args.path))),
                Ok(metadata) => metadata,
                Err(e) if e.kind() == io::ErrorKind::NotFound && args.not_exist => {
                    return Ok(format!("{} does not exist", args.path))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err((FailReason::Missing, format!("{} does not exist", args.path)))
                }
                Err(e) => return Err((FailReason::Io, format!("{}: {e}", args.path))),
            };
            let mode = metadata.permissions().mode() & 0o7777;
            if let Some(want) = args.mode.filter(|want| want.bits() != mode) {
                return Err((FailReason::WrongMode, format!("{} has mode {mode:04o}, not {want}", args.path)));
            }
            let size = metadata.len();
            if let Some(min) = args.min_size.filter(|min| size < *min) {
                return Err((FailReason::TooSmall, format!("{} has {size} bytes, fewer than {min}", args.path)));
            }
            if let Some(max) = args.max_size.filter(|max| size > *max) {
                return Err((FailReason::TooLarge, format!("{} has {size} bytes, more than {max}", args.path)));
            }
            Ok(format!("{} exists with mode {mode:04o} and {size} bytes", args.path))
        })
        .await)
    }

    pub async fn tcp_response(&self, args: &TcpResponseArgs) -> Result<HealthReport, InvalidArgs> {
        args.validate().map_err(InvalidArgs)?;
        let regex = match &args.regexp {
            Some(pattern) => {
                Some(regex_lite::Regex::new(pattern).map_err(|e| InvalidArgs(format!("regexp {pattern:?}: {e}")))?)
            }
            None => None,
        };
        let args = args.clone();
        let timeout = args.timeout();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = received.clone();
        let mut report = timed(timeout, async move {
            let mut stream = TcpStream::connect(&args.address).await.map_err(|e| connect_failure(&args.address, &e))?;
            if let Some(body) = &args.body {
                stream
                    .write_all(body.as_bytes())
                    .await
                    .map_err(|e| (FailReason::Unreachable, format!("sending the body: {e}")))?;
            }
            let Some(regex) = regex else { return Ok(format!("connected to {}", args.address)) };
            let mut chunk = [0u8; 4096];
            loop {
                let n =
                    stream.read(&mut chunk).await.map_err(|e| (FailReason::Unreachable, format!("reading: {e}")))?;
                let mut buffer = seen.lock().expect("buffer lock");
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer);
                if regex.is_match(&text) {
                    return Ok(format!("the response from {} matches {}", args.address, regex.as_str()));
                }
                if n == 0 || buffer.len() >= MAX_TCP_RESPONSE {
                    let why = if n == 0 { "the connection closed" } else { "64 KiB read" };
                    return Err((
                        FailReason::NoMatch,
                        format!("{why} without a match for {}: {}", regex.as_str(), excerpt(&text)),
                    ));
                }
            }
        })
        .await;
        if report.reason == Some(FailReason::Timeout) {
            let buffer = received.lock().expect("buffer lock");
            if !buffer.is_empty() {
                report.message =
                    format!("{}; received: {}", report.message, excerpt(&String::from_utf8_lossy(&buffer)));
            }
        }
        Ok(report)
    }

    pub async fn http_status(&self, args: &HttpStatusArgs) -> Result<HealthReport, InvalidArgs> {
        args.validate().map_err(InvalidArgs)?;
        let method =
            http::Method::from_bytes(args.method().as_bytes()).map_err(|e| InvalidArgs(format!("method: {e}")))?;
        let body = Full::new(Bytes::from(args.body.clone().unwrap_or_default()));
        let request = http::Request::builder()
            .method(method)
            .uri(&args.url)
            .header(http::header::USER_AGENT, "cerana-health")
            .body(body)
            .map_err(|e| InvalidArgs(format!("url {:?}: {e}", args.url)))?;
        let client = self.http.clone();
        let (url, want) = (args.url.clone(), args.status_code());
        Ok(timed(args.timeout(), async move {
            let response = client.request(request).await.map_err(|e| http_failure(&url, &e))?;
            let status = response.status().as_u16();
            if status != want {
                return Err((FailReason::WrongStatus, format!("{url} answered {status}, not {want}")));
            }
            Ok(format!("{url} answered {status}"))
        })
        .await)
    }
}

/// A check's finding: a pass message, or why it failed.
type Outcome = Result<String, (FailReason, String)>;

/// Runs a check within `timeout`, timing it; running out of time is a failed check.
async fn timed(timeout: Duration, check: impl Future<Output = Outcome>) -> HealthReport {
    let started = Instant::now();
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(message)) => HealthReport::pass(message, started.elapsed()),
        Ok(Err((reason, message))) => HealthReport::fail(reason, message, started.elapsed()),
        Err(_) => HealthReport::fail(
            FailReason::Timeout,
            format!("no result within {} ms", timeout.as_millis()),
            started.elapsed(),
        ),
    }
}

fn read_proc(path: &Path) -> Result<String, (FailReason, String)> {
    std::fs::read_to_string(path).map_err(|e| (FailReason::Io, format!("{}: {e}", path.display())))
}

fn connect_failure(address: &str, e: &io::Error) -> (FailReason, String) {
    let reason =
        if e.kind() == io::ErrorKind::ConnectionRefused { FailReason::Refused } else { FailReason::Unreachable };
    (reason, format!("connecting to {address}: {e}"))
}

fn http_failure(url: &str, e: &hyper_util::client::legacy::Error) -> (FailReason, String) {
    let mut chain = e.to_string();
    let mut reason = FailReason::Unreachable;
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        if cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused) {
            reason = FailReason::Refused;
        }
        source = cause.source();
    }
    (reason, format!("{url}: {chain}"))
}

/// The start of a response, for a failure message.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

fn http_client() -> HttpClient {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        for cert in rustls_pemfile::certs(&mut &pem[..]).filter_map(Result::ok) {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // Every check opens its own connection, as a new client would: a pooled one could hide a
    // server that no longer accepts.
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector)
}

/// The whole `cerana-health` program (see [`Provider::main`]).
pub fn main() -> std::process::ExitCode {
    provider().main()
}

/// The provider checking the running system.
pub fn provider() -> Provider {
    provider_with(Checker::system())
}

/// Serves task `T` by running its arguments as the check `wrap` makes of them.
fn serve<T: Task<Output = HealthReport>>(
    provider: Provider,
    checker: &Checker,
    wrap: fn(T::Args) -> HealthCheck,
) -> Provider {
    let checker = checker.clone();
    provider.task::<T, _, _>(move |_ctx, args| {
        let checker = checker.clone();
        async move { Ok(checker.run(&wrap(args)).await?) }
    })
}

/// The provider running its checks with `checker`.
pub fn provider_with(checker: Checker) -> Provider {
    let provider = Provider::new("health", env!("CARGO_PKG_VERSION"));
    let provider = serve::<HealthUptime>(provider, &checker, HealthCheck::Uptime);
    let provider = serve::<HealthFile>(provider, &checker, HealthCheck::File);
    let provider = serve::<HealthTcpResponse>(provider, &checker, HealthCheck::TcpResponse);
    serve::<HealthHttpStatus>(provider, &checker, HealthCheck::HttpStatus)
}

#[cfg(test)]
mod tests;
