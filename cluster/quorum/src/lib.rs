//! `cerana-quorum`: this node's part in the cluster store's etcd quorum (issue #16).
//!
//! Two loops, both level-triggered:
//!
//! - the **member loop** decides how this node's etcd starts ([`launch::decide`]: a new
//!   cluster, its own data, or as a candidate the leader adds), runs it, and decides again
//!   whenever it exits;
//! - the **cluster loop** follows the member list, publishes the voters' client URLs for the
//!   node's store clients (the `kv` and `clusterconf` providers read them from
//!   [`Config::endpoints_file`]), and on the one node elected through etcd runs the membership
//!   planner: promote caught-up learners, replace voters down past the grace period, add
//!   candidates as learners while there are fewer voters than `cerana.etcd_members`.
//!
//! Keys under `/cerana/v1/quorum/`: `leader` (the election), `candidates/NAME` (a node that
//! offers to be a member, bound to its lease), `joins/NAME` (how the leader says a candidate
//! was added: `--initial-cluster`), `plan` (what the leader did or waits for, and why).

pub mod launch;
pub mod presence;
pub mod settings;

use cerana_membership::{Candidate, Desired, Observed, Plan, Step};
use cerana_store::{LazyStore, Store, StoreConfig, StoreError, StoreMember, StoreTls};
use launch::{Initial, Listen, Me, Start, View};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "/cerana/v1/quorum/";
const LEADER_KEY: &str = "/cerana/v1/quorum/leader";
const PLAN_KEY: &str = "/cerana/v1/quorum/plan";
/// How often the loops look again.
const ROUND: Duration = Duration::from_secs(2);
/// Leases of the election and of candidacies.
const LEASE_SECS: i64 = 10;
/// A join the candidate did not act on is withdrawn by then (the learner is removed after the
/// grace period anyway).
const JOIN_SECS: i64 = 300;

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub me: Me,
    pub listen: Listen,
    pub bootstrap: bool,
    /// Client URLs to ask for the cluster before any member list is known.
    pub seeds: Vec<String>,
    pub desired: Desired,
    /// The member's data: on the pool where there is one.
    pub data_dir: PathBuf,
    /// The voters' client URLs, one per line, for this node's store clients.
    pub endpoints_file: PathBuf,
    /// The last known client URLs, kept across reboots (on the pool) when set.
    pub known_file: Option<PathBuf>,
    pub etcd: PathBuf,
    pub pid_file: PathBuf,
    pub store_timeout: Duration,
    /// On the bootstrap node: the cluster CA, which issues this node's own certificate.
    pub authority: Option<Authority>,
    /// The node's coordinator and the list of members' coordinators it may forward to.
    pub coordinators: Option<Coordinators>,
}

/// The coordinators of the cluster, as this node's coordinator is told them.
#[derive(Debug, Clone)]
pub struct Coordinators {
    /// This node's coordinator, as the others reach it (in its node entry).
    pub own_url: String,
    /// The coordinators of the nodes to ask before the store answers (`cerana.cluster_ips`).
    pub seeds: Vec<String>,
    /// Where the members' coordinators are written, one base URL per line.
    pub file: PathBuf,
    /// Where the cluster's scoped API tokens are copied for the coordinator (`--tokens-file`).
    pub tokens_file: PathBuf,
}

/// Where the bootstrap node keeps the cluster CA.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The CA's key and certificate: made on the first boot, on the pool where there is one.
    pub ca_dir: PathBuf,
    /// A symbolic link to `ca_dir` at a fixed place, for the boot server that signs the
    /// certificates of the nodes it boots.
    pub published: Option<PathBuf>,
    /// The addresses this node's own certificate names besides its node name.
    pub addresses: Vec<std::net::IpAddr>,
}

/// A candidacy, as stored under `candidates/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidacy {
    pub peer_url: String,
    pub client_url: String,
}

/// How the leader tells a candidate that it was added, under `joins/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub id: u64,
    pub peer_url: String,
    pub initial_cluster: String,
}

/// The client URLs this node knows to reach the cluster through.
#[derive(Debug, Clone, Default)]
struct Known(Arc<Mutex<Vec<String>>>);

impl Known {
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, urls: Vec<String>) -> bool {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *known != urls;
        *known = urls;
        changed
    }
}

/// A store client over the known URLs (made again when they change), or `None` while none
/// is known.
async fn store_over(client: &LazyStore, known: &Known) -> Option<Store> {
    let endpoints = known.get();
    if endpoints.is_empty() {
        return None;
    }
    client.over(endpoints).await.inspect_err(|e| tracing::warn!(error = %e, "cannot make a store client")).ok()
}

/// The agent's store client: its endpoints come from [`Known`].
fn store_client(config: &Config, tls: Option<StoreTls>) -> LazyStore {
    let mut store = StoreConfig::new(Vec::new());
    store.op_timeout = config.store_timeout;
    store.tls = tls;
    LazyStore::new(store)
}

/// Makes sure this node has its certificate before etcd or a store client needs it: on the
/// bootstrap node the cluster CA (made on the first boot) issues it; on the others it comes
/// with the check-in at the boot server, and this waits for it. Then the files for the store
/// client; `None` without TLS.
async fn prepare_tls(config: &Config) -> Option<StoreTls> {
    let tls = config.listen.tls.as_ref()?;
    let mut said = String::new();
    let mut say = |what: String| {
        if what != said {
            tracing::warn!("{what}");
            said = what;
        }
    };
    loop {
        if let Some(authority) = &config.authority {
            match issue_own(authority, tls, &config.me.name) {
                Ok(()) => {
                    // The fingerprint an operator checks the CA they are handed against.
                    let pem = std::fs::read_to_string(tls.ca()).unwrap_or_default();
                    let sha256 = cerana_pki::fingerprint(&pem).unwrap_or_default();
                    tracing::info!(ca = %authority.ca_dir.display(), "this node has its certificate from the cluster CA");
                    tracing::info!("cluster CA sha256={sha256}");
                }
                Err(e) => say(format!("cannot issue this node's certificate: {e}")),
            }
        } else if !tls.is_complete() {
            say(format!(
                "no certificate for this node in {} yet: it comes from the boot server's check-in \
                 (a node not booted from the network joins with a token, issue #17)",
                tls.dir.display()
            ));
        }
        if tls.is_complete() {
            match StoreTls::from_files(&tls.ca(), &tls.cert(), &tls.key()) {
                Ok(files) => return Some(files),
                Err(e) => say(format!("this node's certificate: {e}")),
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

fn issue_own(authority: &Authority, tls: &cerana_pki::NodeTls, name: &str) -> Result<(), String> {
    let ca = cerana_pki::ClusterCa::load_or_create(&authority.ca_dir).map_err(|e| e.to_string())?;
    if let Some(link) = &authority.published {
        if std::fs::read_link(link).ok().as_deref() != Some(authority.ca_dir.as_path()) {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&authority.ca_dir, link).map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    // An agent restarted on a running node keeps the certificate this CA gave it: etcd and the
    // providers hold it, and each restart would otherwise mint a new key.
    if tls.is_complete() && std::fs::read_to_string(tls.ca()).is_ok_and(|pem| pem == ca.cert_pem()) {
        return Ok(());
    }
    tls.issue_own(&ca, name, &authority.addresses).map_err(|e| e.to_string())
}

fn voters_client_urls(members: &[StoreMember]) -> Vec<String> {
    let mut urls: Vec<String> =
        members.iter().filter(|m| !m.learner).flat_map(|m| m.client_urls.iter().cloned()).collect();
    urls.sort();
    urls.dedup();
    urls
}

/// Runs both loops until the process is stopped.
pub async fn run(config: Config) -> std::io::Result<()> {
    kill_leftover(&config.pid_file);
    let mut start_with = config.seeds.clone();
    if let Some(file) = &config.known_file {
        start_with.extend(read_lines(file));
    }
    start_with.retain(|u| *u != config.me.client_url);
    start_with.sort();
    start_with.dedup();
    let known = Known::default();
    known.set(start_with);
    // Ready before a certificate is there: a node waiting for one still boots.
    cerana_protocol::readiness::notify_ready();
    let tls = prepare_tls(&config).await;
    let _cluster =
        AbortOnDrop(tokio::spawn(cluster_loop(config.clone(), known.clone(), store_client(&config, tls.clone()))));
    member_loop(&config, &known, store_client(&config, tls)).await;
    Ok(())
}

/// Ends the cluster loop with the member loop, however that ends (even dropped).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes `lines` to `path` through a temporary file, so readers never see half of it.
fn write_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    std::fs::rename(tmp, path)
}

/// An etcd left running by an earlier run of this agent (killed without its children).
fn kill_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "etcd" {
        tracing::warn!(pid, "stopping the etcd an earlier run left behind");
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The member list through `known` (this node's own member is not asked: it is not running).
async fn ask_cluster(client: &LazyStore, known: &Known) -> View {
    match store_over(client, known).await {
        None => View::Unreachable,
        Some(store) => match store.members().await {
            Ok(members) => View::Members(members),
            Err(e) => {
                tracing::info!(error = %e, "the cluster does not answer");
                View::Unreachable
            }
        },
    }
}

async fn member_loop(config: &Config, known: &Known, client: LazyStore) {
    let mut backoff = Duration::from_secs(1);
    let mut last_wait = String::new();
    loop {
        let has_data = launch::has_member_data(&config.data_dir);
        let view = ask_cluster(&client, known).await;
        let start = launch::decide(&config.me, config.bootstrap, has_data, &view);
        if !matches!(start, Start::Wait(_)) {
            tracing::info!(?start, has_data, "member");
        }
        let initial = match start {
            Start::New => Some(Initial::New),
            Start::FromData => None,
            Start::RemoveStale { id } => {
                if let Some(store) = store_over(&client, known).await {
                    match store.remove_member(id).await {
                        Ok(()) => tracing::info!(id, "removed this node's stale member (its data is gone)"),
                        Err(e) => tracing::warn!(id, error = %e, "cannot remove this node's stale member yet"),
                    }
                }
                tokio::time::sleep(ROUND).await;
                continue;
            }
            Start::Discard => {
                let aside = config.data_dir.with_extension("removed");
                let _ = std::fs::remove_dir_all(&aside);
                match std::fs::rename(&config.data_dir, &aside) {
                    Ok(()) => {
                        tracing::warn!(to = %aside.display(), "this node's member was removed from the cluster: its data is set aside")
                    }
                    Err(e) => tracing::error!(error = %e, "cannot set the removed member's data aside"),
                }
                continue;
            }
            Start::Candidate => match candidacy(config, &client, known).await {
                Some(join) => Some(Initial::Existing(join.initial_cluster)),
                None => continue,
            },
            Start::Wait(why) => {
                if why != last_wait {
                    tracing::info!("waiting: {why}");
                    last_wait = why;
                }
                tokio::time::sleep(ROUND).await;
                continue;
            }
        };
        let started = Instant::now();
        match run_etcd(config, initial.as_ref()).await {
            Ok(status) => tracing::warn!(%status, "etcd exited"),
            Err(e) => tracing::error!(error = %e, "cannot run etcd"),
        }
        // An etcd that ran a while is restarted at once; one that keeps failing, more slowly.
        backoff = if started.elapsed() > Duration::from_secs(60) {
            Duration::from_secs(1)
        } else {
            (backoff * 2).min(Duration::from_secs(30))
        };
        tokio::time::sleep(backoff).await;
    }
}

/// Offers this node until the leader has added it (or the cluster says otherwise: `None`, to
/// decide again).
async fn candidacy(config: &Config, client: &LazyStore, known: &Known) -> Option<Join> {
    let me = &config.me;
    let key = format!("{PREFIX}candidates/{}", me.name);
    let join_key = format!("{PREFIX}joins/{}", me.name);
    let value = serde_json::to_string(&Candidacy { peer_url: me.peer_url.clone(), client_url: me.client_url.clone() })
        .unwrap_or_default();
    let mut lease: Option<i64> = None;
    loop {
        let Some(store) = store_over(client, known).await else {
            tokio::time::sleep(ROUND).await;
            continue;
        };
        let members = store.members().await.ok();
        match store.get(&join_key).await {
            Ok(Some(entry)) => match serde_json::from_str::<Join>(&entry.value) {
                // Only a join for a member that is there now, added for this address and not
                // started yet: an older one (its member removed since) would start a member
                // the cluster no longer knows.
                Ok(join)
                    if join.peer_url == me.peer_url
                        && members.as_ref().is_some_and(|ms| {
                            ms.iter()
                                .any(|m| m.id == join.id && m.name.is_empty() && m.peer_urls.contains(&me.peer_url))
                        }) =>
                {
                    tracing::info!(id = join.id, initial_cluster = %join.initial_cluster, "added by the leader; starting");
                    if let Some(lease) = lease {
                        let _ = store.revoke(lease).await;
                    }
                    return Some(join);
                }
                Ok(_) | Err(_) if members.is_some() => {
                    tracing::info!("a stale join for this node: withdrawn");
                    let _ = store.delete_if(&join_key, entry.index).await;
                }
                _ => {}
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read this node's join"),
        }
        // The cluster may have changed its mind (this node is a member after all, or its stale
        // member must go first): decide again now and then.
        if let Ok(members) = store.members().await {
            let start = launch::decide(
                me,
                config.bootstrap,
                launch::has_member_data(&config.data_dir),
                &View::Members(members),
            );
            if start != Start::Candidate {
                return None;
            }
        }
        let alive = match lease {
            Some(id) => store.keep_alive(id).await.is_ok(),
            None => false,
        };
        if !alive {
            match store.put_ephemeral(&key, &value, LEASE_SECS).await {
                Ok((id, _)) => {
                    tracing::info!("offered this node as a member");
                    lease = Some(id);
                }
                Err(e) => tracing::debug!(error = %e, "cannot offer this node yet"),
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

async fn run_etcd(config: &Config, initial: Option<&Initial>) -> std::io::Result<std::process::ExitStatus> {
    std::fs::create_dir_all(&config.data_dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let args = launch::etcd_args(&config.me, &config.listen, &config.data_dir, initial);
    tracing::info!(args = %args.join(" "), "starting etcd");
    let mut child = tokio::process::Command::new(&config.etcd).args(&args).kill_on_drop(true).spawn()?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(&config.pid_file, pid.to_string());
    }
    let status = child.wait().await;
    let _ = std::fs::remove_file(&config.pid_file);
    status
}

/// What the leader keeps between rounds: since when each member has been unreachable.
#[derive(Debug, Default)]
struct Watchkeeper {
    down_since: HashMap<u64, Instant>,
}

impl Watchkeeper {
    async fn observe(&mut self, store: &Store, members: &[StoreMember]) -> Vec<Observed> {
        let now = Instant::now();
        let mut observed = Vec::with_capacity(members.len());
        for m in members {
            let mut up = false;
            for url in &m.client_urls {
                if store.member_status(url).await.is_ok_and(|s| s.errors.is_empty()) {
                    up = true;
                    break;
                }
            }
            let down_for = if up {
                self.down_since.remove(&m.id);
                None
            } else {
                Some(now.duration_since(*self.down_since.entry(m.id).or_insert(now)))
            };
            observed.push(Observed { member: m.clone(), down_for });
        }
        self.down_since.retain(|id, _| members.iter().any(|m| m.id == *id));
        observed
    }
}

/// This node's place in the election.
#[derive(Debug, Default)]
struct Leadership {
    lease: Option<i64>,
}

impl Leadership {
    async fn lead(&mut self, store: &Store, name: &str) -> bool {
        if let Some(lease) = self.lease {
            if store.keep_alive(lease).await.is_ok() && store.is_leader(LEADER_KEY, lease).await.unwrap_or(false) {
                return true;
            }
            tracing::warn!("no longer the quorum's leader");
            self.lease = None;
        }
        match store.leader(LEADER_KEY).await {
            Ok(None) => match store.campaign(LEADER_KEY, name, LEASE_SECS, Duration::ZERO).await {
                Ok(holder) => {
                    tracing::info!(token = holder.token, "leading the quorum's membership");
                    self.lease = Some(holder.lease);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        }
    }
}

async fn cluster_loop(config: Config, known: Known, client: LazyStore) {
    let mut leadership = Leadership::default();
    let mut watchkeeper = Watchkeeper::default();
    let mut last_plan = String::new();
    let mut presence = presence::Presence::default();
    // The first round at once: a node's store clients wait for what it publishes.
    let mut rounds = tokio::time::interval(ROUND);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        // Our own member too, once it runs: it may be the only one left answering.
        let mut endpoints = known.get();
        if !endpoints.contains(&config.me.client_url) && Path::new(&config.pid_file).exists() {
            endpoints.push(config.me.client_url.clone());
        }
        let Some(store) = client.over(endpoints).await.ok() else { continue };
        let members = match store.members().await {
            Ok(members) => members,
            Err(e) => {
                tracing::debug!(error = %e, "no member list");
                continue;
            }
        };
        publish(&config, &known, &members);
        let own_api = config.coordinators.as_ref().map(|c| c.own_url.as_str());
        presence.beat(&store, &config.me.name, own_api).await;
        if let Some(coordinators) = &config.coordinators {
            let also: Vec<String> = coordinators.seeds.iter().chain([&coordinators.own_url]).cloned().collect();
            match presence::members_api_urls(&store, &also).await {
                Ok(urls) if read_lines(&coordinators.file) != urls => {
                    if let Err(e) = write_lines(&coordinators.file, &urls) {
                        tracing::warn!(file = %coordinators.file.display(), error = %e, "cannot write the members' coordinators");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot list the nodes"),
            }
            copy_tokens(&store, &coordinators.tokens_file).await;
        }
        if !leadership.lead(&store, &config.me.name).await {
            watchkeeper = Watchkeeper::default();
            continue;
        }
        let observed = watchkeeper.observe(&store, &members).await;
        let candidates: Vec<Candidate> = match store.list(&format!("{PREFIX}candidates/"), None, 100, false).await {
            Ok(page) => page
                .entries
                .iter()
                .filter_map(|e| {
                    let name = e.key.rsplit('/').next()?.to_owned();
                    let c: Candidacy = serde_json::from_str(&e.value).ok()?;
                    Some(Candidate { name, peer_url: c.peer_url })
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no candidates");
                continue;
            }
        };
        let plan = cerana_membership::plan(config.desired, &observed, &candidates);
        let said = match &plan {
            Plan::Act(step) => act(&store, step).await,
            Plan::Wait(why) => format!("waiting: {why}"),
            Plan::Done => format!("{} voters, as desired", config.desired.voters),
        };
        if said != last_plan {
            tracing::info!("membership: {said}");
            let record = serde_json::json!({ "leader": config.me.name, "plan": said });
            let _ = store.put(PLAN_KEY, &record.to_string()).await;
            last_plan = said;
        }
    }
}

/// Copies the live API token records to the coordinator's tokens file: a token minted or
/// revoked anywhere works, or stops working, on this node within a round. When the store does
/// not answer, the file stays as it was.
async fn copy_tokens(store: &Store, file: &Path) {
    match cerana_store::token_records(store).await {
        Ok(records) => match cerana_credentials::write_tokens_file(file, &records, cerana_credentials::unix_now()) {
            Ok(true) => tracing::info!(file = %file.display(), tokens = records.len(), "API tokens updated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot write the API tokens"),
        },
        Err(e) => tracing::debug!(error = %e, "cannot list the API tokens"),
    }
}

/// The voters' client URLs, for this node's store clients and for its next boot.
fn publish(config: &Config, known: &Known, members: &[StoreMember]) {
    let urls = voters_client_urls(members);
    if urls.is_empty() || !known.set(urls.clone()) && config.endpoints_file.exists() {
        return;
    }
    tracing::info!(endpoints = %urls.join(","), "the store's voters");
    if let Err(e) = write_lines(&config.endpoints_file, &urls) {
        tracing::warn!(error = %e, file = %config.endpoints_file.display(), "cannot publish the store's endpoints");
    }
    if let Some(file) = &config.known_file {
        let _ = write_lines(file, &urls);
    }
}

/// Carries out one step; says what happened.
async fn act(store: &Store, step: &Step) -> String {
    match cerana_membership::apply(store, step).await {
        Ok(None) => format!("done: {step:?}"),
        Ok(Some(joining)) => {
            let Step::AddLearner { name, peer_url } = step else { return format!("done: {step:?}") };
            let join = Join { id: joining.id, peer_url: peer_url.clone(), initial_cluster: joining.initial_cluster };
            let value = serde_json::to_string(&join).unwrap_or_default();
            match store.put_ephemeral(&format!("{PREFIX}joins/{name}"), &value, JOIN_SECS).await {
                Ok(_) => format!("added {name} ({peer_url}) as a learner"),
                Err(e) => format!("added {name} as a learner, but could not tell it: {e}"),
            }
        }
        Err(e) if matches!(e.source, StoreError::Invalid(_) | StoreError::Failed { .. }) => {
            format!("not yet: {e}")
        }
        Err(e) => format!("failed: {e}"),
    }
}

/// The `cerana-quorum` program: settings from the kernel command line and the host.
pub fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CERANA_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cerana-quorum: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = match config_from_host() {
        Ok(config) => config,
        // A node that cannot be a member (a stand-alone node with no address, a bad setting)
        // still boots: the agent says why once and stays up doing nothing, and the store's
        // clients answer `unavailable` (no endpoints), rather than holding node_ready back
        // with restarts.
        Err(e) => {
            tracing::warn!("not taking part in the cluster store: {e}");
            cerana_protocol::readiness::notify_ready();
            runtime.block_on(std::future::pending::<()>());
            return std::process::ExitCode::SUCCESS;
        }
    };
    tracing::info!(name = %config.me.name, peer = %config.me.peer_url, data = %config.data_dir.display(),
        voters = config.desired.voters, grace_s = config.desired.grace.as_secs(), "quorum agent");
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cerana-quorum: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether the pool's `config` dataset is mounted.
fn pool_config_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/data/config"))
}

fn config_from_host() -> Result<Config, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let settings = settings::CmdlineSettings::parse(&cmdline).map_err(|e| e.to_string())?;
    let name = nix::unistd::gethostname()
        .map_err(|e| format!("hostname: {e}"))?
        .into_string()
        .map_err(|_| "the hostname is not UTF-8".to_string())?;
    let address = match (settings.address, settings.seeds.first()) {
        (Some(a), _) => a,
        (None, Some(seed)) => settings::address_toward(*seed).map_err(|e| format!("the route to {seed}: {e}"))?,
        (None, None) => {
            return Err(
                "a stand-alone node (no cerana.mgmt_ip and no cerana.cluster_ips): no address to be a member at".into(),
            )
        }
    };
    let host = match address {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    // Peers and clients speak mutual TLS on the node's address; plain HTTP only on loopback.
    let me = Me { name, peer_url: format!("https://{host}:2380"), client_url: format!("https://{host}:2379") };
    let seeds = settings
        .seeds
        .iter()
        .filter(|ip| **ip != address)
        .map(|ip| match ip {
            std::net::IpAddr::V6(v6) => format!("https://[{v6}]:2379"),
            v4 => format!("https://{v4}:2379"),
        })
        .collect();
    let on_pool = pool_config_mounted();
    let authority = settings.bootstrap.then(|| Authority {
        ca_dir: if on_pool { "/data/config/ca".into() } else { "/run/cerana/ca-store".into() },
        published: Some(CA_LINK.into()),
        addresses: vec![address, std::net::Ipv4Addr::LOCALHOST.into()],
    });
    Ok(Config {
        me,
        listen: Listen {
            local_client_url: Some("http://127.0.0.1:2379".into()),
            metrics_url: Some("http://127.0.0.1:2381".into()),
            tls: Some(cerana_pki::NodeTls::new(NODE_TLS_DIR)),
        },
        bootstrap: settings.bootstrap,
        seeds,
        desired: Desired { voters: settings.voters, grace: settings.grace },
        data_dir: if on_pool { "/data/config/etcd".into() } else { "/run/cerana/etcd".into() },
        endpoints_file: "/run/cerana/store-endpoints".into(),
        known_file: on_pool.then(|| "/data/config/store-endpoints".into()),
        etcd: "/usr/bin/etcd".into(),
        pid_file: "/run/cerana/etcd.pid".into(),
        store_timeout: Duration::from_secs(3),
        authority,
        // HTTPS: the agent reaches the store only with the node's certificate, which its
        // coordinator then serves with (`--node-tls`).
        coordinators: Some(Coordinators {
            own_url: format!("https://{host}:{COORDINATOR_PORT}"),
            seeds: settings
                .seeds
                .iter()
                .map(|ip| match ip {
                    std::net::IpAddr::V6(v6) => format!("https://[{v6}]:{COORDINATOR_PORT}"),
                    v4 => format!("https://{v4}:{COORDINATOR_PORT}"),
                })
                .collect(),
            file: CLUSTER_PEERS.into(),
            tokens_file: API_TOKENS.into(),
        }),
    })
}

/// This node's key, certificate and the cluster CA's certificate (the boot server's check-in
/// writes them on a network-booted node).
pub const NODE_TLS_DIR: &str = "/run/cerana/tls";
/// The members' coordinators, for this node's coordinator (`--peers-file`).
pub const CLUSTER_PEERS: &str = "/run/cerana/cluster-peers";
/// The cluster's scoped API tokens (hashes only), for this node's coordinator (`--tokens-file`).
pub const API_TOKENS: &str = "/run/cerana/api-tokens";
/// Every node's coordinator listens on this port (init's service table).
const COORDINATOR_PORT: u16 = 8080;
/// Where the bootstrap node's boot server finds the cluster CA.
pub const CA_LINK: &str = "/run/cerana/ca";
