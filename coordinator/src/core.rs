//! Routing: accepting requests, choosing a provider, tracking them to their outcome.

use crate::address::{Origin, OwnAddress};
use crate::builtin;
use crate::config::Config;
use crate::conn::{self, ConnSender};
use crate::counters::TaskCounters;
use crate::journal::{Finish, Journal};
use crate::registry::{ProviderEntry, Registry};
use crate::streams::StreamBroker;
use cerana_client::{ClientError, HttpClient};
use cerana_protocol::frame::FrameError;
use cerana_protocol::tasks::coordinator::{JournalEntry, ProviderInfo, TaskProvider, TaskState};
use cerana_protocol::{ErrorCode, FromCoordinator, NodeUrl, Request, RequestId, Response, TaskError, TaskName};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Shortest timeout a request may ask for: below it a task would race its own deadline.
pub const MIN_TIMEOUT_MS: u64 = 10;
/// HTTP clients kept for peers and `reply_to` targets (they share one connection pool; this
/// bounds the map of them, which any caller naming new URLs would otherwise grow).
pub const MAX_PEER_CLIENTS: usize = 16;
/// How long delivering a response to a `reply_to` URL may take.
pub const REPLY_TO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request's response goes.
#[derive(Debug)]
pub enum ReplySink {
    /// Back on the caller's unix connection.
    Conn(ConnSender),
    /// To an HTTP handler waiting for it.
    Waiter(oneshot::Sender<Response>),
    /// Nobody waits: the outcome is only journaled (HTTP `wait=false`).
    Detached,
}

/// Where a request is being handled.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Provider(u64),
    Forward(NodeUrl),
}

#[derive(Debug)]
struct Pending {
    task: TaskName,
    reply: ReplySink,
    reply_to: Option<String>,
    route: Route,
    provider_name: Option<cerana_protocol::ProviderName>,
    deadline: Instant,
    timeout: Duration,
    journal_seq: u64,
    accepted: Instant,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Shared state of a running coordinator.
///
/// Lock order: `pending` before `journal` before nothing; `registry` is never held while
/// taking another lock.
#[derive(Debug)]
pub struct Core {
    pub config: Config,
    pub started: Instant,
    pub registry: RwLock<Registry>,
    pending: Mutex<HashMap<RequestId, Pending>>,
    pub journal: Mutex<Journal>,
    pub streams: StreamBroker,
    pub task_counters: TaskCounters,
    own_address: OwnAddress,
    peers: Mutex<PeerClients>,
    /// The scoped API tokens callers may present (`Config::tokens_file`).
    pub tokens: Option<cerana_credentials::TokensFile>,
    /// The node's own certificate, once it has one (`Config::node_tls`).
    pub node_tls: Option<crate::node_tls::NodeTlsWatch>,
}

/// HTTP clients for peer coordinators and `reply_to` targets, by base URL, least recently used
/// first; all share the first one's connection pool and TLS configuration.
#[derive(Debug, Default)]
struct PeerClients {
    shared: Option<HttpClient>,
    by_base: VecDeque<(NodeUrl, HttpClient)>,
    /// The node certificate's generation the clients were built with (0: none).
    generation: u64,
}

impl Core {
    pub fn new(config: Config) -> Arc<Self> {
        let journal = Journal::new(config.journal_limits());
        let streams = StreamBroker::new(config.stream_rendezvous);
        Arc::new(Self {
            own_address: config.own_address(),
            tokens: config.tokens_file.as_ref().map(cerana_credentials::TokensFile::new),
            node_tls: config.node_tls.as_ref().map(crate::node_tls::NodeTlsWatch::new),
            config,
            started: Instant::now(),
            registry: RwLock::new(Registry::default()),
            pending: Mutex::new(HashMap::new()),
            journal: Mutex::new(journal),
            streams,
            task_counters: Default::default(),
            peers: Mutex::new(PeerClients::default()),
        })
    }

    /// Whether `node` names this coordinator (any spelling of its URL).
    pub fn is_own_url(&self, node: &NodeUrl) -> bool {
        self.own_address.is_own(node)
    }

    pub fn in_flight(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }

    pub fn in_flight_by_provider(&self) -> HashMap<u64, u32> {
        let mut counts = HashMap::new();
        for p in self.pending.lock().expect("pending lock").values() {
            if let Route::Provider(conn) = p.route {
                *counts.entry(conn).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Accepts `request` from `caller`: acknowledges it (for connection callers), routes it, and
    /// arranges for its response to reach `reply`.
    pub fn submit(self: &Arc<Self>, mut request: Request, caller: String, reply: ReplySink) {
        let id = request.id;
        let task = request.task.clone();
        if let Some(ms) = request.timeout_ms.filter(|&ms| ms < MIN_TIMEOUT_MS) {
            let error = TaskError::new(
                ErrorCode::InvalidRequest,
                format!("timeout_ms {ms} is below the minimum of {MIN_TIMEOUT_MS} ms"),
            );
            return self.reject(request, caller, reply, error);
        }
        let timeout = request
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);

        // The cluster's credentials go to members only: refused before any connection.
        let reply_to_refused = request.reply_to.as_deref().and_then(|url| match NodeUrl::new(url) {
            Ok(url) if Origin::of(&url).is_none() => {
                Some((ErrorCode::InvalidRequest, format!("{url} has no usable host and port")))
            }
            Ok(url) => self.config.peers.allows(&url).err().map(|why| (ErrorCode::PermissionDenied, why)),
            Err(e) => Some((ErrorCode::InvalidRequest, format!("{url:?} is not an http(s) URL: {e}"))),
        });
        if let Some((code, why)) = reply_to_refused {
            request.reply_to = None;
            return self.reject(request, caller, reply, TaskError::new(code, format!("reply_to: {why}")));
        }
        if let Some(node) = request.node.take() {
            if !self.is_own_url(&node) {
                if let Err(why) = self.config.peers.allows(&node) {
                    let error = TaskError::new(ErrorCode::PermissionDenied, format!("node: {why}"));
                    return self.reject(request, caller, reply, error);
                }
                // The peer answers the caller through this coordinator, not on its own.
                request.reply_to = None;
                let route = Route::Forward(node.clone());
                if !self.accept(&request, &caller, reply, route, None, timeout) {
                    return;
                }
                let core = self.clone();
                tokio::spawn(async move { core.forward(node, request).await });
                return;
            }
        }

        if builtin::is_builtin(task.as_str()) {
            let outcome = builtin::run(&**self, &task, request.args.get());
            let route = Route::Provider(0);
            if self.accept(&request, &caller, reply, route, None, timeout) {
                self.complete(Response { id, outcome, stream: None }, None);
            }
            return;
        }

        let known = cerana_protocol::tasks::lookup(task.as_str());
        if let Some(info) = known {
            if let Err(message) = (info.check_args)(request.args.get()) {
                let error = TaskError::new(ErrorCode::InvalidArgs, format!("arguments of {task}: {message}"));
                return self.reject(request, caller, reply, error);
            }
        }
        let candidates = self.registry.read().expect("registry lock").candidates(&task);
        if candidates.is_empty() {
            let error = if known.is_some() {
                TaskError::new(ErrorCode::NoProvider, format!("no provider serving {task} is connected"))
            } else {
                TaskError::new(ErrorCode::UnknownTask, format!("no task named {task} is documented or served"))
            };
            return self.reject(request, caller, reply, error);
        }
        // Framed once for whichever provider takes it; a request that grew past the frame limit
        // (an HTTP body has no frame around it) is refused as such, not as a lost provider.
        let message = FromCoordinator::Request(request);
        let encoded = conn::encode(&message);
        let FromCoordinator::Request(request) = message else { unreachable!("built as a request above") };
        let frame = match encoded {
            Ok(frame) => frame,
            Err(e) => {
                let error = match e {
                    FrameError::TooLarge { len, max } => TaskError::new(
                        ErrorCode::FrameTooLarge,
                        format!("the request is {len} bytes as a frame to its provider; the limit is {max}"),
                    ),
                    e => TaskError::new(ErrorCode::Internal, format!("cannot encode the request: {e}")),
                };
                return self.reject(request, caller, reply, error);
            }
        };
        let first = &candidates[0];
        if !self.accept(&request, &caller, reply, Route::Provider(first.conn_id), Some(first), timeout) {
            return;
        }
        self.dispatch(id, &task, frame, candidates);
    }

    /// Sends the request `frame` to the first live candidate, failing over in priority order.
    fn dispatch(
        self: &Arc<Self>,
        id: RequestId,
        task: &TaskName,
        mut frame: Vec<u8>,
        candidates: Vec<Arc<ProviderEntry>>,
    ) {
        let mut failed_over = false;
        for provider in &candidates {
            {
                let mut pending = self.pending.lock().expect("pending lock");
                let Some(entry) = pending.get_mut(&id) else { return };
                entry.route = Route::Provider(provider.conn_id);
                entry.provider_name = Some(provider.hello.name.clone());
            }
            match provider.sender.send_frame(frame) {
                Ok(()) => {
                    if failed_over {
                        // Lock order is pending → journal; never hold the journal while taking pending.
                        let seq = self.journal_seq(id);
                        self.journal.lock().expect("journal lock").set_provider(seq, provider.hello.name.clone());
                    }
                    return;
                }
                Err(returned) => frame = returned,
            }
            failed_over = true;
            tracing::info!(provider = %provider.hello.name, "provider gone; trying the next one");
        }
        let error = TaskError::new(ErrorCode::NoProvider, format!("every provider of {task} has gone away"));
        self.complete(Response::err(id, error), None);
    }

    fn journal_seq(&self, id: RequestId) -> u64 {
        self.pending.lock().expect("pending lock").get(&id).map_or(u64::MAX, |p| p.journal_seq)
    }

    /// Records the request and acknowledges it; false (after answering) when the id is in use.
    fn accept(
        self: &Arc<Self>,
        request: &Request,
        caller: &str,
        reply: ReplySink,
        route: Route,
        provider: Option<&Arc<ProviderEntry>>,
        timeout: Duration,
    ) -> bool {
        let id = request.id;
        let mut pending = self.pending.lock().expect("pending lock");
        let mut journal = self.journal.lock().expect("journal lock");
        let duplicate = if pending.contains_key(&id) {
            Some("is already in flight")
        } else if journal.contains(id) {
            Some("was run already (it is in the journal); use a fresh id")
        } else {
            None
        };
        if let Some(why) = duplicate {
            drop(journal);
            drop(pending);
            let error = TaskError::new(ErrorCode::DuplicateId, format!("request {id} {why}")).with_task(&request.task);
            deliver(reply, Response::err(id, error));
            return false;
        }
        let forwarded_to = match &route {
            Route::Forward(node) => Some(node.to_string()),
            Route::Provider(_) => None,
        };
        let journal_seq = journal.push(JournalEntry {
            id,
            task: request.task.clone(),
            state: TaskState::Running,
            caller: caller.to_owned(),
            provider: provider.map(|p| p.hello.name.clone()),
            forwarded_to,
            parent: request.parent,
            accepted_at_ms: now_ms(),
            finished_at_ms: None,
            duration_us: None,
            error: None,
            result: None,
            result_omitted: None,
        });
        drop(journal);
        if let ReplySink::Conn(conn) = &reply {
            conn.send(&FromCoordinator::Ack { id });
        }
        pending.insert(
            id,
            Pending {
                task: request.task.clone(),
                reply,
                reply_to: request.reply_to.clone(),
                route,
                provider_name: provider.map(|p| p.hello.name.clone()),
                deadline: Instant::now() + timeout,
                timeout,
                journal_seq,
                accepted: Instant::now(),
            },
        );
        true
    }

    /// Answers a request that never got routed, journaling it as failed.
    /// Journals `request` as refused with `error` and answers `reply` so.
    pub fn reject(self: &Arc<Self>, request: Request, caller: String, reply: ReplySink, error: TaskError) {
        if self.accept(&request, &caller, reply, Route::Provider(0), None, self.config.max_timeout) {
            self.complete(Response::err(request.id, error), None);
        }
    }

    /// Delivers a response. `from_provider` is the connection it came from, which must be the
    /// one the request was routed to; responses for unknown or foreign ids are dropped.
    pub fn complete(self: &Arc<Self>, mut response: Response, from_provider: Option<u64>) {
        let pending = {
            let mut map = self.pending.lock().expect("pending lock");
            match map.get(&response.id) {
                Some(p) if from_provider.is_none_or(|conn| p.route == Route::Provider(conn)) => {}
                Some(_) => {
                    tracing::warn!(id = %response.id, "a provider answered a request it was not given");
                    return;
                }
                None => {
                    tracing::debug!(id = %response.id, "response for a request that is no longer pending");
                    return;
                }
            }
            map.remove(&response.id).expect("checked above")
        };
        if let Err(error) = &mut response.outcome {
            error.task.get_or_insert_with(|| pending.task.clone());
            if let (None, Some(p)) = (&error.provider, &pending.provider_name) {
                error.provider = Some(p.clone());
            }
        }
        let state = match &response.outcome {
            Ok(_) => TaskState::Done,
            Err(e) if e.code == ErrorCode::Timeout => TaskState::TimedOut,
            Err(e) if e.code == ErrorCode::Cancelled => TaskState::Cancelled,
            Err(_) => TaskState::Failed,
        };
        self.task_counters.record(&pending.task, &response.outcome, state, pending.accepted.elapsed());
        self.journal.lock().expect("journal lock").finish(
            pending.journal_seq,
            Finish {
                state,
                finished_at_ms: now_ms(),
                duration_us: pending.accepted.elapsed().as_micros() as u64,
                outcome: &response.outcome,
            },
        );
        if let Some(url) = pending.reply_to {
            let core = self.clone();
            let response = response.clone();
            tokio::spawn(async move { core.post_reply(url, response).await });
        }
        deliver(pending.reply, response);
    }

    /// Tells the provider handling `id` to stop; false when `id` is no longer pending.
    fn cancel_at_provider(&self, id: RequestId) -> bool {
        let conn = {
            let map = self.pending.lock().expect("pending lock");
            let Some(p) = map.get(&id) else { return false };
            match p.route {
                Route::Provider(conn) => conn,
                Route::Forward(_) => return true,
            }
        };
        if let Some(sender) = self.registry.read().expect("registry lock").sender(conn) {
            sender.send(&FromCoordinator::Cancel { id });
        }
        true
    }

    /// Expires every request whose deadline has passed. One sweeper calls this a few times a
    /// second instead of a timer task per request, which costs a spawn and an abort each.
    pub fn expire_due(self: &Arc<Self>) {
        let now = Instant::now();
        let due: Vec<(RequestId, Duration)> = self
            .pending
            .lock()
            .expect("pending lock")
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| (*id, p.timeout))
            .collect();
        for (id, timeout) in due {
            self.expire(id, timeout);
        }
    }

    /// The request's time is up: tell its provider to stop and its caller why.
    fn expire(self: &Arc<Self>, id: RequestId, after: Duration) {
        if !self.cancel_at_provider(id) {
            return;
        }
        let error = TaskError::new(ErrorCode::Timeout, format!("no response within {} ms", after.as_millis()));
        self.complete(Response::err(id, error), None);
    }

    /// The caller gave up on `id`.
    pub fn cancel(self: &Arc<Self>, id: RequestId) {
        if !self.cancel_at_provider(id) {
            return;
        }
        self.complete(Response::err(id, TaskError::new(ErrorCode::Cancelled, "cancelled by the caller")), None);
    }

    /// A provider connection closed: unregister it and fail what it was handling.
    pub fn provider_gone(self: &Arc<Self>, conn_id: u64) {
        let name = self.registry.write().expect("registry lock").remove(conn_id);
        let lost: Vec<RequestId> = self
            .pending
            .lock()
            .expect("pending lock")
            .iter()
            .filter(|(_, p)| p.route == Route::Provider(conn_id))
            .map(|(id, _)| *id)
            .collect();
        if let Some(name) = &name {
            tracing::info!(provider = %name, lost = lost.len(), "provider disconnected");
        }
        for id in lost {
            let error = TaskError::new(ErrorCode::ProviderLost, "the provider went away before answering");
            self.complete(Response::err(id, error), Some(conn_id));
        }
    }

    /// A stream of a forwarded request named without a node is ours: name this coordinator as
    /// the peer reaches it.
    async fn name_local_stream(&self, node: &NodeUrl, request: &mut Request) -> Result<(), TaskError> {
        let Some(stream) = request.stream.as_mut().filter(|s| s.node.is_none()) else { return Ok(()) };
        let refuse = |why: String| {
            TaskError::new(ErrorCode::InvalidRequest, format!("cannot forward a task with a local stream: {why}"))
        };
        let origin = Origin::of(node).ok_or_else(|| refuse(format!("{node} has no valid port")))?;
        let peer_ip = match origin.ip() {
            Some(ip) => ip,
            None => tokio::net::lookup_host((origin.host.as_str(), origin.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .map(|addr| addr.ip())
                .ok_or_else(|| refuse(format!("cannot resolve {}", origin.host)))?,
        };
        let mut own = self.own_address.clone();
        if let Some(watch) = &self.node_tls {
            own.https = watch.current().is_some();
        }
        stream.node = Some(own.for_peer(peer_ip, crate::address::route_source).map_err(refuse)?);
        Ok(())
    }

    /// The HTTP client for the coordinator (or `reply_to` target) at `base`.
    pub(crate) fn peer(&self, base: &NodeUrl) -> Result<HttpClient, ClientError> {
        if let Err(why) = self.config.peers.allows(base) {
            return Err(ClientError::Api(TaskError::new(ErrorCode::PermissionDenied, why)));
        }
        let node_tls = self.node_tls.as_ref().and_then(|watch| Some((watch, watch.current()?)));
        let mut peers = self.peers.lock().expect("peers lock");
        // A new node certificate: clients made with the old one go.
        let generation = node_tls.as_ref().map_or(0, |(_, loaded)| loaded.generation);
        if peers.generation != generation {
            *peers = PeerClients { generation, ..PeerClients::default() };
        }
        if let Some(index) = peers.by_base.iter().position(|(b, _)| b == base) {
            let used = peers.by_base.remove(index).expect("found above");
            peers.by_base.push_back(used.clone());
            return Ok(used.1);
        }
        let client = match &peers.shared {
            Some(shared) => shared.with_base(base.clone()),
            None => {
                let (cert, key, ca) = match &node_tls {
                    Some((watch, _)) => (Some(watch.cert()), Some(watch.key()), Some(watch.ca())),
                    None => {
                        let files = self.config.peer_identity.as_ref();
                        (files.map(|f| f.cert.clone()), files.map(|f| f.key.clone()), self.config.peer_ca.clone())
                    }
                };
                let identity =
                    cert.as_deref().zip(key.as_deref()).map(|(cert, key)| cerana_client::ClientIdentity { cert, key });
                let client =
                    HttpClient::with_identity(base.clone(), self.config.peer_token.clone(), ca.as_deref(), identity)?;
                peers.shared = Some(client.clone());
                client
            }
        };
        if peers.by_base.len() >= MAX_PEER_CLIENTS {
            peers.by_base.pop_front();
        }
        peers.by_base.push_back((base.clone(), client.clone()));
        Ok(client)
    }

    async fn forward(self: Arc<Self>, node: NodeUrl, mut request: Request) {
        let id = request.id;
        if let Err(error) = self.name_local_stream(&node, &mut request).await {
            return self.complete(Response::err(id, error), None);
        }
        let outcome = match self.peer(&node) {
            Ok(client) => client.call(&request).await,
            Err(e) => Err(e),
        };
        let response = match outcome {
            Ok(mut response) => {
                if let Some(stream) = &mut response.stream {
                    stream.node.get_or_insert_with(|| node.clone());
                }
                if let Err(e) = &mut response.outcome {
                    e.node.get_or_insert_with(|| node.to_string());
                }
                response
            }
            Err(cerana_client::ClientError::Api(error)) => Response::err(id, error.with_node(node.to_string())),
            Err(e) => Response::err(
                id,
                TaskError::new(ErrorCode::PeerUnreachable, format!("forwarding to {node} failed: {e}"))
                    .with_node(node.to_string()),
            ),
        };
        self.complete(response, None);
    }

    async fn post_reply(self: Arc<Self>, url: String, response: Response) {
        // One client per server, not per URL: callers choose these URLs freely. `submit` has
        // refused a reply_to without a usable origin, so this holds.
        let Some(origin) = NodeUrl::new(url.clone()).ok().as_ref().and_then(Origin::of) else {
            tracing::error!(%url, "reply_to has no origin; response kept only in the journal");
            return;
        };
        match self.peer(&origin.url()) {
            Ok(client) => match tokio::time::timeout(REPLY_TO_TIMEOUT, client.post_response(&url, &response)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%url, "delivering a response to reply_to failed: {e}"),
                Err(_) => tracing::warn!(%url, "delivering a response to reply_to timed out"),
            },
            Err(e) => tracing::warn!(%url, "cannot reach reply_to: {e}"),
        }
    }
}

fn deliver(reply: ReplySink, response: Response) {
    match reply {
        ReplySink::Conn(conn) => {
            let id = response.id;
            match conn::encode(&FromCoordinator::Response(response)) {
                Ok(frame) => {
                    let _ = conn.send_frame(frame);
                }
                // The caller must not wait forever for a result that cannot reach it.
                Err(e) => {
                    let error = TaskError::new(ErrorCode::FrameTooLarge, format!("the response cannot be sent: {e}"));
                    conn.send(&FromCoordinator::Response(Response::err(id, error)));
                }
            }
        }
        ReplySink::Waiter(tx) => {
            let _ = tx.send(response);
        }
        ReplySink::Detached => {}
    }
}

impl builtin::State for Core {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn in_flight(&self) -> usize {
        Core::in_flight(self)
    }

    fn provider_count(&self) -> usize {
        self.registry.read().expect("registry lock").len()
    }

    fn providers(&self) -> Vec<ProviderInfo> {
        let counts = self.in_flight_by_provider();
        self.registry.read().expect("registry lock").providers(|conn| counts.get(&conn).copied().unwrap_or(0))
    }

    fn served_tasks(&self) -> Vec<(TaskName, Vec<TaskProvider>)> {
        self.registry.read().expect("registry lock").served_tasks()
    }

    fn journal(&self) -> &Mutex<Journal> {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #15: callers choose `reply_to` URLs (and peers) freely; the clients kept for them
    /// stay bounded.
    #[test]
    fn clients_for_distinct_urls_stay_bounded() {
        let core = Core::new(Config::new("/nonexistent/c.sock"));
        for i in 0..1_000 {
            let url = NodeUrl::new(format!("http://127.0.{}.{}:{}/reply/{i}", i / 250, i % 250, 1_000 + i)).unwrap();
            core.peer(&url).unwrap();
        }
        let kept = core.peers.lock().unwrap().by_base.len();
        assert!(kept <= MAX_PEER_CLIENTS, "{kept} clients kept");
        // The most recently used are kept and found again.
        let last = NodeUrl::new("http://127.0.3.249:1999/reply/999").unwrap();
        core.peer(&last).unwrap();
        assert_eq!(core.peers.lock().unwrap().by_base.len(), kept);
    }
}
