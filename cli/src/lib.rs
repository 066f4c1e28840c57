//! `cerana`: run tasks on CeranaOS nodes and inspect their coordinators.

mod args;
mod config;
mod manifest;
mod render;

use anyhow::Context as _;
use cerana_client::{open_stream, Client, ClientError, HttpClient, UnixClient};
use cerana_protocol::error::ErrorClass;
use cerana_protocol::stream::{ChunkReader, ChunkWriter};
use cerana_protocol::{
    NodeUrl, Request, RequestId, Response, StreamDirection, StreamHandle, StreamId, TaskError, TaskName,
};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
EXAMPLES:
  cerana task run node-info                         facts about this node
  cerana task run zfs-create name=data/x type=filesystem
  cerana task run kv-set --json args.json           arguments from a file (- for stdin)
  cerana task run zfs-receive name=data/y --stream-in backup.zfs
  cerana --node http://10.0.0.5:8080 --token-file token task history --limit 5
  cerana task list                                  every task and who serves it
  cerana kv set /cerana/v1/defaults '{\"ttl\":5}'    the cluster store (get, set, ls, watch, rm)
  cerana kv ls /cerana/v1/ --values
  cerana set bundle -f web.toml                     declared objects (get, describe, delete, set)
  cerana get bundles; cerana describe bundle web
  cerana plan -f site/; cerana apply -f site/        files of [[dataset]], [[service]], [[bundle]]

ARGUMENTS:
  key=value words become the task's JSON arguments. Values that parse as JSON are typed
  (10, true, [1,2], {\"a\":1}, \"quoted\"); anything else is a string. Dotted keys nest:
  props.compression=lz4 gives {\"props\":{\"compression\":\"lz4\"}}. A word that starts
  with { is a whole JSON object: cerana task run zfs-get '{\"name\":\"data/x\"}'.

EXIT CODES:
  0 success   1 task failed   2 usage   3 bad input (unknown task, invalid arguments)
  4 not found   5 conflict (exists, busy)   6 timeout   7 unavailable (no provider, node
  unreachable)   8 authentication";

#[derive(Parser, Debug)]
#[command(name = "cerana", version, about = "Run tasks on CeranaOS nodes and inspect their coordinators", after_help = AFTER_HELP)]
struct Cli {
    /// A node's coordinator URL (http:// or https://), reached with --config's CA and
    /// credential if one is given; without it, a node of --config, else the local unix socket.
    #[arg(long, global = true, env = "CERANA_NODE")]
    node: Option<NodeUrl>,
    /// A cluster's CLI configuration (its nodes and credential; `make cluster` writes one):
    /// the first of its nodes that answers is used.
    #[arg(long, global = true, env = "CERANA_CONFIG")]
    config: Option<PathBuf>,
    /// The local coordinator's unix socket.
    #[arg(long, global = true, env = "CERANA_COORDINATOR_SOCKET", default_value = cerana_protocol::DEFAULT_COORDINATOR_SOCKET)]
    socket: PathBuf,
    /// File holding the bearer token for --node.
    #[arg(long, global = true, env = "CERANA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https --node.
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    /// A table with more columns where there are more (`get bundles`: subnets and addresses).
    Wide,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run and inspect tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Connected providers and the tasks each serves.
    Providers,
    /// The coordinator's name, version, uptime and load.
    Status,
    /// The cluster store: keys and values (the kv-* tasks).
    #[command(subcommand)]
    Kv(KvCommand),
    /// The cluster's API credentials (the auth-* tasks; an admin credential is needed).
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Machines joining the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Lists declared objects, or shows one.
    Get { kind: Kind, id: Option<String> },
    /// Shows one object in full (a bundle with its services as it runs them).
    Describe { kind: Kind, id: String },
    /// Deletes an object (with --mod-index only if unchanged since), or every object a file
    /// or directory declares (-f), bundles first.
    Delete {
        #[arg(required_unless_present = "file")]
        kind: Option<Kind>,
        #[arg(required_unless_present = "file")]
        id: Option<String>,
        #[arg(long, conflicts_with = "file")]
        mod_index: Option<u64>,
        /// A file (TOML or JSON) or a directory of them, as `cerana apply -f` reads.
        #[arg(short, long, value_name = "FILE|DIR", conflicts_with_all = ["kind", "id"])]
        file: Option<PathBuf>,
    },
    /// Declares every object of a file or directory (TOML or JSON: `[[dataset]]`, `[[service]]`,
    /// `[[bundle]]`, `[defaults]`): creates what is new, changes what differs, in the order
    /// their references need; prints what it did, as `plan -f` would show it.
    Apply {
        #[arg(short, long, value_name = "FILE|DIR")]
        file: PathBuf,
        /// Apply only if the cluster's declared objects are still at this revision (the one
        /// `plan -f` printed); every write is also a compare-and-swap on the index it read.
        #[arg(long, value_name = "REVISION")]
        check_index: Option<u64>,
    },
    /// Creates or replaces an object from a JSON or TOML file (- for stdin); its mod_index
    /// says which version it replaces (none: create only).
    Set {
        kind: SetKind,
        #[arg(short, long, value_name = "FILE")]
        file: String,
        /// Replace whatever version is declared now (the file's mod_index, if any, wins).
        #[arg(long)]
        replace: bool,
    },
    /// Imports a dataset onto a node of the cluster from a stream: a tar archive (plain, gzip
    /// or zstd: `tar c`, `docker export`) or a ZFS send stream; the ticks copy it from there.
    Import {
        kind: ImportKind,
        id: String,
        /// The file to import, or - for stdin.
        #[arg(long, value_name = "FILE")]
        stream_in: String,
        #[arg(long, value_enum, default_value_t = ImportFormat::Tar)]
        format: ImportFormat,
        /// Copies the cluster keeps.
        #[arg(long, default_value_t = 1)]
        redundancy: u32,
        /// Snapshot it and keep it read-only (what services run from).
        #[arg(long)]
        read_only: bool,
        /// Bytes it may hold, unpacked.
        #[arg(long)]
        quota: Option<u64>,
        /// The node to import on (the one with most free disk otherwise).
        #[arg(long, value_name = "NAME")]
        on_node: Option<String>,
        /// Seconds to wait for the import (the coordinator's default otherwise).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// What the next cluster tick would do (`+` start, `-` stop or destroy, `~` copy, with
    /// reasons) and what cannot be placed; with -f, what `apply -f` would change, field by
    /// field (`+` create, `~` change), and the revision for `apply --check-index`. Exit 0:
    /// nothing would change; 2: something would; 1: it could not be told.
    Plan {
        #[arg(short, long, value_name = "FILE|DIR")]
        file: Option<PathBuf>,
    },
    /// The cluster ticks.
    #[command(subcommand)]
    Ticks(TicksCommand),
    /// A bundle's service logs from every node running a replica, each line prefixed by its
    /// node and service, oldest first: the current run of each service, or the one before the
    /// last restart with --previous; -f follows them.
    Logs {
        /// BUNDLE or BUNDLE/SERVICE (the service's name in the bundle).
        target: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        previous: bool,
        /// At most this many of the newest lines of each replica's service.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// The cluster's history: the tasks that changed something (every task with --all), from
    /// every node's journal, newest first, with the node, who asked and how it ended.
    History {
        /// At most this many entries (from each node, and in all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Read tasks too.
        #[arg(long)]
        all: bool,
    },
    /// Every node's hardware (CPU, memory, disks with serials, network interfaces with MACs,
    /// firmware) and software (image, kernel, each provider's version), and the cluster's data
    /// (each dataset, its copies and where they are).
    Inventory,
}

/// What `cerana import` makes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ImportKind {
    Dataset,
}

/// What `cerana import dataset` reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ImportFormat {
    Tar,
    Zfs,
}

#[derive(Subcommand, Debug)]
enum TicksCommand {
    /// The cluster ticks' journal, newest first: what each run read, did and how it went.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// What `cerana get|describe|delete` works on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    #[value(alias = "dataset")]
    Datasets,
    #[value(alias = "service")]
    Services,
    #[value(alias = "bundle")]
    Bundles,
    #[value(alias = "node")]
    Nodes,
}

impl Kind {
    /// The singular used in task names (`get-dataset`) and the list task's name and field.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Datasets => ("dataset", "list-datasets", "datasets"),
            Kind::Services => ("service", "list-services", "services"),
            Kind::Bundles => ("bundle", "list-bundles", "bundles"),
            Kind::Nodes => ("node", "list-nodes", "nodes"),
        }
    }
}

/// What `cerana set` writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum SetKind {
    Dataset,
    Service,
    Bundle,
    Defaults,
    Dhcp,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Scoped API tokens: bearer tokens that may run what their role allows.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// One-time join tokens for machines that do not boot from the network (USB, ISO).
    #[command(subcommand)]
    Token(JoinTokenCommand),
    /// Nodes' past figures (one entry a minute, kept a day), newest first.
    History {
        /// Only these nodes (every node with a history otherwise).
        nodes: Vec<String>,
        /// Only this far back: a number with s, m, h or d (1m to 1d).
        #[arg(long, value_parser = parse_ttl)]
        since: Option<u64>,
        /// At most this many entries a node.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum JoinTokenCommand {
    /// Mints a join token on the node whose boot server holds the cluster CA (the bootstrap
    /// node; choose it with --node) and prints the kernel command line that spends it.
    Create {
        /// Lifetime: a number with s, m, h or d (1m to 1d).
        #[arg(long, value_parser = parse_ttl, default_value = "10m")]
        ttl: u64,
        /// Only the machine with this MAC address may spend it.
        #[arg(long)]
        mac: Option<cerana_protocol::tasks::boot::MacAddr>,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Mints a token and prints it: its secret is shown this once.
    Create {
        /// read: read tasks only; operator: read and write tasks; admin: everything.
        #[arg(long)]
        role: cerana_protocol::tasks::auth::Role,
        /// Lifetime: a number with s, m, h or d (`10m`, `24h`, `30d`).
        #[arg(long, value_parser = parse_ttl)]
        ttl: u64,
        /// What it is for, shown in lists.
        #[arg(long)]
        description: Option<String>,
    },
    /// The cluster's tokens (never their secrets).
    #[command(alias = "ls")]
    List,
    /// Revokes a token: every node refuses it within seconds.
    Revoke { id: String },
}

/// `10m`, `24h`, `30d`, `90s` (or plain seconds) in seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a lifetime such as 10m, 24h or 30d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// A key's value and index.
    Get { key: String },
    /// Writes a key; with --index only if the key's index is still that (0: only if absent).
    Set {
        key: String,
        value: String,
        #[arg(long)]
        index: Option<u64>,
    },
    /// The keys under a prefix (every page), with --values their values too.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        values: bool,
    },
    /// Follows the changes under a prefix: one JSON event per line, until interrupted.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// The first index to report (resume with the last index seen + 1).
        #[arg(long)]
        from: Option<u64>,
    },
    /// The store's members: voter or learner, healthy, leader.
    Members,
    /// Deletes a key; -r also everything under KEY/; --index only if unchanged since.
    Rm {
        key: String,
        #[arg(short, long)]
        recursive: bool,
        #[arg(long, conflicts_with = "recursive")]
        index: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Run a task and print its result.
    Run {
        /// The task's name, e.g. node-info.
        task: TaskName,
        /// Arguments as key=value words, or JSON objects.
        args: Vec<String>,
        /// Arguments as a JSON object from a file, or - for stdin.
        #[arg(long, value_name = "FILE")]
        json: Option<String>,
        /// Feed this file (or - for stdin) to the task as its input stream.
        #[arg(long, value_name = "FILE")]
        stream_in: Option<String>,
        /// Write the task's output stream to this file (or - for stdout).
        #[arg(long, value_name = "FILE")]
        stream_out: Option<String>,
        /// Run the task on another node, forwarded by the coordinator.
        #[arg(long, value_name = "URL")]
        on: Option<NodeUrl>,
        /// Seconds to wait for the result (the coordinator's default otherwise).
        #[arg(long)]
        timeout: Option<u64>,
        /// Only submit the task and print its id; see `cerana task get ID`.
        #[arg(long)]
        no_wait: bool,
    },
    /// Every task that is documented or served, with its providers.
    List,
    /// Recent tasks, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this task.
        #[arg(long)]
        task: Option<TaskName>,
        /// Only tasks in this state (accepted, running, done, failed, timed_out, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only tasks older than this cursor (the `next_before` of the page before).
        #[arg(long)]
        before: Option<u64>,
    },
    /// One task's journal entry, with its result while it is kept.
    Get { id: RequestId },
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
    fn task(error: &TaskError) -> Self {
        let code = match error.code.class() {
            ErrorClass::Failed => 1,
            ErrorClass::BadInput => 3,
            ErrorClass::NotFound => 4,
            ErrorClass::Conflict => 5,
            ErrorClass::Timeout => 6,
            ErrorClass::Unavailable => 7,
            ErrorClass::Auth => 8,
        };
        Self { code, message: error.to_string() }
    }
    fn client(error: ClientError) -> Self {
        match &error {
            ClientError::Refused(e) | ClientError::Api(e) => Self::task(e),
            ClientError::Connect { .. } | ClientError::Closed => Self { code: 7, message: error.to_string() },
            _ => Self { code: 1, message: error.to_string() },
        }
    }
    fn other(error: anyhow::Error) -> Self {
        Self { code: 1, message: format!("{error:#}") }
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self { code: 7, message: message.into() }
    }
}

/// The whole `cerana` program: parses `std::env::args()`; the exit code says how a task ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {}", render::escape(&e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // `cerana plan`'s "something would change" is an exit code, not an error.
            if !failure.message.is_empty() {
                eprintln!("error: {}", render::escape(&failure.message));
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    // With --node too, the configuration's CA and credential apply: --node only picks the node.
    let config = match &cli.config {
        Some(path) => Some(config::CliConfig::load(path).map_err(|e| Failure::usage(e.to_string()))?),
        None => None,
    };
    let node = match (&cli.node, &config) {
        (Some(node), _) => node.clone(),
        (None, Some(config)) => config.reachable_node().await.map_err(|e| Failure::unavailable(e.to_string()))?,
        (None, None) => {
            return UnixClient::connect(&cli.socket, "cerana-cli").await.map(Client::Unix).map_err(Failure::client)
        }
    };
    let token_file = cli.token_file.as_ref().or(config.as_ref().and_then(|c| c.token_file.as_ref()));
    let token = match (&cli.token_file, std::env::var("CERANA_TOKEN").ok()) {
        // An explicit token wins over the configuration's file.
        (None, Some(token)) => Some(token),
        _ => match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("cannot read token file {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        },
    };
    let ca = cli.ca_cert.as_deref().or(config.as_ref().and_then(|c| c.ca_cert.as_deref()));
    HttpClient::new(node, token, ca).map(|c| Client::Http(Box::new(c))).map_err(Failure::client)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn print(cli: &Cli, value: &serde_json::Value) {
    match cli.output {
        Output::Json => println!("{}", render::json(value)),
        Output::Table | Output::Wide => print!("{}", render::table(value)),
    }
}

fn read_input(source: &str) -> anyhow::Result<String> {
    if source == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading {source}"))
    }
}

/// Runs a coordinator-* task and prints its result.
async fn builtin(cli: &Cli, client: &Client, task: &str, args: serde_json::Value) -> Result<(), Failure> {
    let raw = serde_json::value::to_raw_value(&args).map_err(|e| Failure::other(e.into()))?;
    let request = Request::new(TaskName::new(task).expect("builtin names are valid"), raw);
    let response = client.call(request).await.map_err(Failure::client)?;
    let value = result_value(&response)?;
    print(cli, &value);
    Ok(())
}

fn result_value(response: &Response) -> Result<serde_json::Value, Failure> {
    match &response.outcome {
        Ok(raw) => serde_json::from_str(raw.get()).map_err(|e| Failure::other(e.into())),
        Err(e) => Err(Failure::task(e)),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = connect(&cli).await?;
    match &cli.command {
        Command::Providers => builtin(&cli, &client, "coordinator-providers", serde_json::json!({})).await,
        Command::Status => builtin(&cli, &client, "coordinator-status", serde_json::json!({})).await,
        Command::Kv(kv) => run_kv(&cli, &client, kv).await,
        Command::Auth(AuthCommand::Token(token)) => run_token(&cli, &client, token).await,
        Command::Node(NodeCommand::Token(JoinTokenCommand::Create { ttl, mac })) => {
            let args = serde_json::json!({ "ttl_seconds": ttl, "mac": mac });
            let (_, value) = call_task(&client, "boot-join-token-create", args).await?;
            print(&cli, &value);
            Ok(())
        }
        Command::Node(NodeCommand::History { nodes, since, limit }) => {
            let now = now_ms();
            let after_ms = since.map(|secs| now.saturating_sub(secs * 1000));
            let args = serde_json::json!({ "nodes": nodes, "after_ms": after_ms, "limit": limit });
            let (_, history) = call_task(&client, "get-nodes-history", args).await?;
            match cli.output {
                Output::Json => print(&cli, &history),
                Output::Table | Output::Wide => {
                    print(&cli, &serde_json::json!({ "history": render::history_rows(&history, now) }))
                }
            }
            Ok(())
        }
        Command::Get { kind: Kind::Bundles, id: None } if cli.output != Output::Json => {
            let (_, plan) = call_task(&client, "ticks-plan", serde_json::json!({})).await?;
            let wide = cli.output == Output::Wide;
            print(&cli, &serde_json::json!({ "bundles": render::bundle_rows(&plan, wide) }));
            Ok(())
        }
        Command::Get { kind: Kind::Nodes, id: None } if cli.output != Output::Json => {
            let (_, nodes) = call_task(&client, "list-nodes", serde_json::json!({})).await?;
            print(&cli, &serde_json::json!({ "nodes": render::node_rows(&nodes, now_ms()) }));
            Ok(())
        }
        Command::Plan { file: Some(file) } => {
            let fail = |f: Failure| Failure { code: 1, message: f.message };
            let declared = manifest::load(file).map_err(|e| Failure { code: 1, message: e })?;
            let steps = plan_steps(&client, &declared).await.map_err(fail)?;
            let revision = declared_revision(&client).await.map_err(fail)?;
            // The ticks' dry run of the objects as if applied: where each bundle would run, or why not.
            // Not previewed: no ticks provider reached (7), or a node of an older version that
            // takes no objects (3: the files themselves were checked here already).
            let ticks = match call_task(&client, "ticks-plan", manifest::tick_args(&declared)).await {
                Ok((_, plan)) => Ok(plan),
                Err(f) if f.code == 7 || f.code == 3 => Err(f.message),
                Err(f) => return Err(fail(f)),
            };
            match cli.output {
                Output::Json => {
                    let mut out = manifest::to_json(&steps, revision);
                    out["ticks"] = ticks.unwrap_or_default();
                    println!("{}", render::json(&out));
                }
                Output::Table | Output::Wide => {
                    print!("{}", manifest::render(&steps));
                    println!("revision {revision} (cerana apply -f … --check-index {revision})");
                    match &ticks {
                        Ok(plan) => print!("the ticks would then:\n{}", render::plan(plan)),
                        Err(why) => println!("(placement not previewed: {})", render::escape(why)),
                    }
                }
            }
            if steps.iter().any(|s| s.op != manifest::Op::Unchanged) {
                return Err(Failure { code: 2, message: String::new() });
            }
            Ok(())
        }
        Command::Apply { file, check_index } => {
            let declared = manifest::load(file).map_err(|e| Failure { code: 3, message: e })?;
            let steps = plan_steps(&client, &declared).await?;
            if let Some(wanted) = check_index {
                let revision = declared_revision(&client).await?;
                if revision != *wanted {
                    return Err(Failure {
                        code: 5,
                        message: format!(
                            "the cluster's declared objects are at revision {revision}, not {wanted}: nothing applied; plan again"
                        ),
                    });
                }
            }
            apply_steps(&cli, &client, &steps).await
        }
        Command::Delete { file: Some(file), .. } => {
            let declared = manifest::load(file).map_err(|e| Failure { code: 3, message: e })?;
            delete_declared(&cli, &client, &declared).await
        }
        Command::Plan { file: None } => {
            let plan = call_task(&client, "ticks-plan", serde_json::json!({}))
                .await
                .map_err(|f| Failure { code: 1, message: f.message })?
                .1;
            match cli.output {
                Output::Json => println!("{}", render::json(&plan)),
                Output::Table | Output::Wide => print!("{}", render::plan(&plan)),
            }
            let changes = plan["actions"].as_array().is_some_and(|a| !a.is_empty());
            if changes {
                return Err(Failure { code: 2, message: String::new() });
            }
            Ok(())
        }
        Command::Ticks(TicksCommand::History { limit }) => {
            let (_, mut value) = call_task(&client, "ticks-history", serde_json::json!({ "limit": limit })).await?;
            if cli.output != Output::Json {
                value = serde_json::json!({ "runs": render::run_rows(&value) });
            }
            print(&cli, &value);
            Ok(())
        }
        Command::Logs { target, follow, previous, tail } => {
            let (bundle, service) = match target.split_once('/') {
                Some((b, s)) => (b.to_string(), Some(s.to_string())),
                None => (target.clone(), None),
            };
            run_logs(&cli, &client, &bundle, service, *follow, *previous, *tail).await
        }
        Command::History { limit, all } => {
            let history = cluster_history(&client, *limit, *all).await?;
            match cli.output {
                Output::Json => println!("{}", render::json(&history)),
                Output::Table | Output::Wide => {
                    print!("{}", render::table(&serde_json::json!({ "history": render::history_entry_rows(&history) })))
                }
            }
            Ok(())
        }
        Command::Inventory => {
            let inventory = inventory(&client).await?;
            match cli.output {
                Output::Json => println!("{}", render::json(&inventory)),
                Output::Table | Output::Wide => {
                    print!("{}", render::table(&serde_json::json!({ "nodes": render::inventory_rows(&inventory) })));
                    println!();
                    print!("{}", render::table(&serde_json::json!({ "datasets": inventory["datasets"] })));
                }
            }
            Ok(())
        }
        Command::Import {
            kind: ImportKind::Dataset,
            id,
            stream_in,
            format,
            redundancy,
            read_only,
            quota,
            on_node,
            timeout,
        } => {
            let format = match format {
                ImportFormat::Tar => "tar",
                ImportFormat::Zfs => "zfs",
            };
            let args = serde_json::json!({
                "id": id, "format": format, "redundancy": redundancy, "read_only": read_only,
                "quota": quota, "node": on_node,
            });
            let raw = serde_json::value::to_raw_value(&args).map_err(|e| Failure::other(e.into()))?;
            let mut request = Request::new(TaskName::new("import-dataset").expect("valid"), raw);
            request.timeout_ms = Some(timeout.unwrap_or(3600) * 1000);
            let stream = StreamId::random();
            request.stream = Some(StreamHandle::local(stream));
            let feeder = tokio::spawn(feed_stream(cli.socket.clone(), http_of(&client), stream, stream_in.clone()));
            let response = client.call(request).await.map_err(Failure::client)?;
            match feeder.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if response.outcome.is_ok() => return Err(Failure::other(e)),
                _ => {}
            }
            print(&cli, &result_value(&response)?);
            Ok(())
        }
        Command::Get { kind, id } => {
            let (one, list, field) = kind.names();
            let value = match id {
                Some(id) => {
                    let mut args = serde_json::json!({ "id": id });
                    if *kind == Kind::Bundles {
                        args["overlay"] = serde_json::json!(false);
                    }
                    call_task(&client, &format!("get-{one}"), args).await?.1
                }
                None => {
                    let (_, mut listing) = call_task(&client, list, serde_json::json!({})).await?;
                    // A bundle list holds {bundle, services}: show the bundles.
                    if *kind == Kind::Bundles {
                        if let Some(views) = listing[field].as_array_mut() {
                            for view in views.iter_mut() {
                                *view = view["bundle"].take();
                            }
                        }
                    }
                    listing
                }
            };
            print(&cli, &value);
            Ok(())
        }
        Command::Describe { kind, id } => {
            let (one, _, _) = kind.names();
            let mut args = serde_json::json!({ "id": id });
            if *kind == Kind::Bundles {
                args["overlay"] = serde_json::json!(true);
            }
            let (_, mut value) = call_task(&client, &format!("get-{one}"), args).await?;
            if *kind == Kind::Bundles {
                // Where it runs, and why replicas are missing, as the ticks see it.
                if let Ok((_, plan)) = call_task(&client, "ticks-plan", serde_json::json!({})).await {
                    let status = plan["bundles"].as_array().into_iter().flatten().find(|b| b["id"] == id.as_str());
                    value["placement"] = status.cloned().unwrap_or(serde_json::Value::Null);
                }
                // Its network: addresses, firewall, and which bundles it reaches and is reached by.
                if let Ok((_, listing)) = call_task(&client, "list-bundles", serde_json::json!({})).await {
                    let all: Vec<serde_json::Value> =
                        listing["bundles"].as_array().into_iter().flatten().map(|v| v["bundle"].clone()).collect();
                    value["network"] = render::bundle_network(&value["bundle"], &value["placement"], &all);
                }
            }
            // Nested objects read best as JSON.
            println!("{}", render::json(&value));
            Ok(())
        }
        Command::Delete { kind: Some(kind), id: Some(id), mod_index, .. } => {
            let (one, _, _) = kind.names();
            if *kind == Kind::Nodes {
                return Err(Failure::usage("nodes come and go with their heartbeats; there is nothing to delete"));
            }
            let mut args = serde_json::json!({ "id": id });
            if let Some(index) = mod_index {
                args["mod_index"] = serde_json::json!(index);
            }
            let (_, value) = call_task(&client, &format!("delete-{one}"), args).await?;
            print(&cli, &value);
            Ok(())
        }
        Command::Delete { .. } => Err(Failure::usage("delete: give KIND ID, or -f FILE|DIR")),
        Command::Set { kind, file, replace } => {
            let text = read_input(file).map_err(|e| Failure::usage(format!("{e:#}")))?;
            let mut object = parse_object(&text).map_err(|e| Failure::usage(format!("{file}: {e}")))?;
            let current = match kind {
                SetKind::Dataset => Some("get-dataset"),
                SetKind::Service => Some("get-service"),
                SetKind::Bundle => Some("get-bundle"),
                SetKind::Defaults | SetKind::Dhcp => None,
            };
            if let (true, Some(get), None) = (*replace, current, object.get("mod_index")) {
                let id = object.get("id").cloned().ok_or_else(|| Failure::usage(format!("{file}: no id")))?;
                match call_task(&client, get, serde_json::json!({ "id": id })).await {
                    // get-bundle answers a view: {bundle, services?}.
                    Ok((_, now)) => object["mod_index"] = now.get("bundle").unwrap_or(&now)["mod_index"].clone(),
                    Err(e) if e.code == 4 => {}
                    Err(e) => return Err(e),
                }
            }
            let task = match kind {
                SetKind::Dataset => "update-dataset",
                SetKind::Service => "update-service",
                SetKind::Bundle => "update-bundle",
                SetKind::Defaults => "set-default-options",
                SetKind::Dhcp => "set-dhcp-config",
            };
            let (_, value) = call_task(&client, task, object).await?;
            print(&cli, &value);
            Ok(())
        }
        Command::Task(TaskCommand::List) => {
            let raw = serde_json::value::to_raw_value(&serde_json::json!({})).map_err(|e| Failure::other(e.into()))?;
            let request = Request::new(TaskName::new("coordinator-tasks").expect("valid"), raw);
            let response = client.call(request).await.map_err(Failure::client)?;
            let mut value = result_value(&response)?;
            if cli.output == Output::Table {
                // One line per task: providers in the order they are tried.
                if let Some(tasks) = value.get_mut("tasks").and_then(|t| t.as_array_mut()) {
                    for task in tasks.iter_mut() {
                        let providers: Vec<String> = task["providers"]
                            .as_array()
                            .map(|ps| {
                                ps.iter()
                                    .map(|p| format!("{}({})", p["provider"].as_str().unwrap_or("?"), p["priority"]))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let served = if task["builtin"] == true {
                            "coordinator".to_owned()
                        } else if providers.is_empty() {
                            "-".to_owned()
                        } else {
                            providers.join(",")
                        };
                        *task = serde_json::json!({"task": task["task"], "served_by": served, "description": task["description"]});
                    }
                }
            }
            print(&cli, &value);
            Ok(())
        }
        Command::Task(TaskCommand::History { limit, task, state, before }) => {
            let mut args = serde_json::json!({ "limit": limit });
            if let Some(before) = before {
                args["before"] = serde_json::json!(before);
            }
            if let Some(task) = task {
                args["task"] = serde_json::json!(task);
            }
            if let Some(state) = state {
                args["state"] = serde_json::json!(state);
            }
            let raw = serde_json::value::to_raw_value(&args).map_err(|e| Failure::other(e.into()))?;
            let response = client
                .call(Request::new(TaskName::new("coordinator-history").expect("valid"), raw))
                .await
                .map_err(Failure::client)?;
            let mut value = result_value(&response)?;
            if cli.output == Output::Table {
                // The table shows the entries; where the next page starts goes to stderr.
                if let Some(next) = value.as_object_mut().and_then(|page| page.remove("next_before")) {
                    eprintln!("older entries: cerana task history --before {next}");
                }
                if let Some(entries) = value.get_mut("entries").and_then(|e| e.as_array_mut()) {
                    for e in entries.iter_mut() {
                        let ms = e["duration_us"].as_u64().map(|us| format!("{:.3}", us as f64 / 1000.0));
                        *e = serde_json::json!({
                            "id": e["id"], "task": e["task"], "state": e["state"],
                            "provider": e.get("provider").cloned().or_else(|| e.get("forwarded_to").cloned()),
                            "ms": ms, "caller": e["caller"], "error": e.get("error"),
                        });
                    }
                }
            }
            print(&cli, &value);
            Ok(())
        }
        Command::Task(TaskCommand::Get { id }) => {
            builtin(&cli, &client, "coordinator-task-get", serde_json::json!({ "id": id })).await
        }
        Command::Task(TaskCommand::Run { task, args, json, stream_in, stream_out, on, timeout, no_wait }) => {
            let json_text =
                json.as_deref().map(read_input).transpose().map_err(|e| Failure::usage(format!("{e:#}")))?;
            let value = args::build(json_text.as_deref(), args).map_err(|e| Failure::usage(e.to_string()))?;
            let raw = serde_json::value::to_raw_value(&value).map_err(|e| Failure::other(e.into()))?;
            let mut request = Request::new(task.clone(), raw);
            request.node = on.clone();
            request.timeout_ms = timeout.map(|s| s * 1000);
            let feeder = match stream_in {
                Some(source) => {
                    let id = StreamId::random();
                    request.stream = Some(StreamHandle::local(id));
                    Some(tokio::spawn(feed_stream(cli.socket.clone(), http_of(&client), id, source.clone())))
                }
                None => None,
            };
            if *no_wait {
                let Client::Http(http) = &client else {
                    return Err(Failure::usage("--no-wait needs --node (the unix socket always waits)"));
                };
                http.submit(&request).await.map_err(Failure::client)?;
                print(&cli, &serde_json::json!({ "id": request.id }));
                return Ok(());
            }
            let response = client.call(request).await.map_err(Failure::client)?;
            if let Some(feeder) = feeder {
                match feeder.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if response.outcome.is_ok() => return Err(Failure::other(e)),
                    _ => {}
                }
            }
            let value = result_value(&response)?;
            if let (Some(target), Some(handle)) = (stream_out, &response.stream) {
                drain_stream(&cli.socket, http_of(&client), handle.clone(), target).await.map_err(Failure::other)?;
            } else if stream_out.is_some() {
                return Err(Failure::usage(format!("{task} returned no output stream")));
            }
            if stream_out.as_deref() != Some("-") {
                print(&cli, &value);
            }
            Ok(())
        }
    }
}

/// Runs `task` with `args`; the response (for its stream) and its result.
async fn call_task(
    client: &Client,
    task: &str,
    args: serde_json::Value,
) -> Result<(Response, serde_json::Value), Failure> {
    let raw = serde_json::value::to_raw_value(&args).map_err(|e| Failure::other(e.into()))?;
    let task = TaskName::new(task).expect("kv task names are valid");
    let response = client.call(Request::new(task, raw)).await.map_err(Failure::client)?;
    let value = result_value(&response)?;
    Ok((response, value))
}

/// An object from JSON, or else TOML.
/// Runs `task` on the node whose coordinator is at `node` (this one: None).
async fn call_on(
    client: &Client,
    node: Option<&NodeUrl>,
    task: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    let raw = serde_json::value::to_raw_value(&args).map_err(|e| Failure::other(e.into()))?;
    let mut request = Request::new(TaskName::new(task).map_err(|e| Failure::other(e.into()))?, raw);
    request.node = node.cloned();
    let response = client.call(request).await.map_err(Failure::client)?;
    result_value(&response)
}

/// The nodes of the cluster (id, coordinator URL) from their heartbeats; without any, this
/// node alone (its id empty).
async fn cluster_nodes(client: &Client) -> Vec<(String, Option<NodeUrl>)> {
    let nodes: Vec<(String, Option<NodeUrl>)> = match call_task(client, "list-nodes", serde_json::json!({})).await {
        Ok((_, list)) => list["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n["id"].as_str()?.to_string(), n["api_url"].as_str().and_then(|u| u.parse().ok()))))
            .collect(),
        Err(_) => Vec::new(),
    };
    if nodes.is_empty() {
        vec![(String::new(), None)]
    } else {
        nodes
    }
}

/// One service of one replica whose logs `cerana logs` reads.
struct LogSource {
    node: String,
    url: Option<NodeUrl>,
    service: String,
    /// The last line seen (`after` of the next read).
    next: u64,
}

/// `cerana logs`: see [`Command::Logs`].
async fn run_logs(
    cli: &Cli,
    client: &Client,
    bundle: &str,
    service: Option<String>,
    follow: bool,
    previous: bool,
    tail: Option<usize>,
) -> Result<(), Failure> {
    use serde_json::json;
    let (_, plan) = call_task(client, "ticks-plan", json!({})).await?;
    let status = plan["bundles"].as_array().into_iter().flatten().find(|b| b["id"] == bundle);
    let Some(status) = status else {
        return Err(Failure { code: 4, message: format!("no bundle {bundle} is declared") });
    };
    let running: Vec<String> =
        status["running_on"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    if running.is_empty() {
        return Err(Failure { code: 4, message: format!("bundle {bundle} runs nowhere now") });
    }
    let services: Vec<String> = match service {
        Some(s) => vec![s],
        None => {
            let (_, view) = call_task(client, "get-bundle", json!({ "id": bundle })).await?;
            view["bundle"]["services"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
        }
    };
    let urls: std::collections::BTreeMap<String, Option<NodeUrl>> =
        cluster_nodes(client).await.into_iter().filter(|(id, _)| !id.is_empty()).collect();
    let mut sources: Vec<LogSource> = running
        .iter()
        .flat_map(|node| {
            let url = urls.get(node).cloned().flatten();
            services.iter().map(move |s| LogSource {
                node: node.clone(),
                url: url.clone(),
                service: s.clone(),
                next: 0,
            })
        })
        .collect();
    let mut first = true;
    loop {
        let mut lines: Vec<serde_json::Value> = Vec::new();
        for source in &mut sources {
            let args = json!({ "id": source.service, "bundle_id": bundle, "after": source.next, "tail": if first { tail } else { None } });
            match call_on(client, source.url.as_ref(), "service-logs", args).await {
                Ok(answer) => {
                    source.next = answer["next"].as_u64().unwrap_or(source.next);
                    let got = answer["lines"].as_array().cloned().unwrap_or_default();
                    let runs = if first { render::log_runs(&got, previous) } else { None };
                    for line in got.into_iter().filter(|l| runs.is_none_or(|r| l["run"].as_u64() == Some(r))) {
                        let mut line = line;
                        line["node"] = json!(source.node);
                        line["service"] = json!(source.service);
                        lines.push(line);
                    }
                }
                Err(f) if !follow => {
                    return Err(Failure {
                        code: f.code,
                        message: format!("{}/{}: {}", source.node, source.service, f.message),
                    })
                }
                Err(f) => eprintln!("{}/{}: {}", source.node, source.service, render::escape(&f.message)),
            }
        }
        lines.sort_by_key(|l| (l["time_ms"].as_u64().unwrap_or(0), l["seq"].as_u64().unwrap_or(0)));
        match cli.output {
            Output::Json if !follow => println!("{}", render::json(&json!({ "lines": lines }))),
            Output::Json => lines.iter().for_each(|l| println!("{l}")),
            Output::Table | Output::Wide => print!("{}", render::log_lines(&lines)),
        }
        if !follow {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `cerana history`: every node's journal, merged newest first; writes only unless `all`. A
/// node that does not answer is said in `unreachable`.
async fn cluster_history(client: &Client, limit: u32, all: bool) -> Result<serde_json::Value, Failure> {
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut unreachable = Vec::new();
    for (id, url) in cluster_nodes(client).await {
        let mut before: Option<u64> = None;
        let mut kept = 0;
        // Pages until `limit` entries that count are found, or the journal ends (at most 20 pages).
        for _ in 0..20 {
            let mut args = serde_json::json!({ "limit": limit });
            if let Some(before) = before {
                args["before"] = serde_json::json!(before);
            }
            let page = match call_on(client, url.as_ref(), "coordinator-history", args).await {
                Ok(page) => page,
                Err(f) => {
                    unreachable.push(serde_json::json!({ "node": id, "error": f.message }));
                    break;
                }
            };
            for entry in page["entries"].as_array().into_iter().flatten() {
                let task = entry["task"].as_str().unwrap_or_default();
                if kept < limit && (all || cerana_protocol::tasks::access_of(task) != cerana_protocol::Access::Read) {
                    let mut entry = entry.clone();
                    entry["node"] = serde_json::json!(id);
                    // The result stays in the node's journal (`cerana task get`).
                    if let Some(map) = entry.as_object_mut() {
                        map.remove("result");
                    }
                    entries.push(entry);
                    kept += 1;
                }
            }
            match page["next_before"].as_u64() {
                Some(next) if kept < limit => before = Some(next),
                _ => break,
            }
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e["accepted_at_ms"].as_u64().unwrap_or(0)));
    entries.truncate(limit as usize);
    Ok(serde_json::json!({ "entries": entries, "unreachable": unreachable }))
}

/// `cerana inventory`: each node's facts and providers (asked of the node itself), and each
/// declared dataset with the nodes holding a copy (from the nodes' reports). A node that does not
/// answer is listed with its error; without a cluster store, the node answering alone.
async fn inventory(client: &Client) -> Result<serde_json::Value, Failure> {
    use serde_json::json;
    let nodes = cluster_nodes(client).await;
    let mut out = Vec::new();
    for (id, url) in &nodes {
        let facts = call_on(client, url.as_ref(), "node-info", json!({})).await;
        let providers = call_on(client, url.as_ref(), "coordinator-providers", json!({})).await;
        let mut entry = match facts {
            Ok(facts) => {
                json!({ "node": if id.is_empty() { facts["hostname"].clone() } else { json!(id) }, "facts": facts })
            }
            Err(f) => json!({ "node": id, "error": f.message }),
        };
        if let Ok(providers) = providers {
            let versions: serde_json::Map<String, serde_json::Value> = providers["providers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["version"].clone())))
                .collect();
            entry["providers"] = serde_json::Value::Object(versions);
        }
        out.push(entry);
    }
    // Where each dataset's copies are: the nodes' reports (`ticks`), read from the store.
    let mut held: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if let Ok((_, page)) =
        call_task(client, "kv-getall", json!({ "prefix": "/cerana/v1/ticks/reports/", "limit": 10000 })).await
    {
        for entry in page["entries"].as_array().into_iter().flatten() {
            let Ok(report) = serde_json::from_str::<serde_json::Value>(entry["value"].as_str().unwrap_or("")) else {
                continue;
            };
            let node = report["node"].as_str().unwrap_or("?").to_string();
            for dataset in report["datasets"].as_object().into_iter().flat_map(|d| d.keys()) {
                held.entry(dataset.clone()).or_default().push(node.clone());
            }
        }
    }
    let datasets: Vec<serde_json::Value> = match call_task(client, "list-datasets", json!({})).await {
        Ok((_, list)) => list["datasets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let id = d["id"].as_str().unwrap_or("?");
                let on = held.get(id).cloned().unwrap_or_default();
                json!({ "id": id, "redundancy": d["redundancy"], "copies": on.len(), "on": on, "quota": d["quota"], "read_only": d["read_only"] })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(json!({ "nodes": out, "datasets": datasets }))
}

/// Each declared object against what the cluster declares now.
async fn plan_steps(client: &Client, declared: &[manifest::Declared]) -> Result<Vec<manifest::Step>, Failure> {
    use manifest::{ObjectKind, Op, Step};
    let mut steps = Vec::new();
    for object in declared {
        let args = if object.kind == ObjectKind::Defaults {
            serde_json::json!({})
        } else {
            serde_json::json!({ "id": object.id })
        };
        let (op, mod_index) = match call_task(client, object.kind.get_task(), args).await {
            Ok((_, answer)) => {
                let (now, index) =
                    manifest::current(object.kind, &answer).map_err(|e| Failure { code: 1, message: e })?;
                let changes = manifest::field_changes(&now, &object.fields);
                (if changes.is_empty() { Op::Unchanged } else { Op::Update(changes) }, index)
            }
            Err(f) if f.code == 4 => (Op::Create, 0),
            Err(f) => return Err(f),
        };
        steps.push(Step { kind: object.kind, id: object.id.clone(), op, mod_index, fields: object.fields.clone() });
    }
    Ok(steps)
}

/// The revision of the cluster's declared objects: the highest index among them.
async fn declared_revision(client: &Client) -> Result<u64, Failure> {
    let mut revision = 0;
    for (task, field) in [("list-datasets", "datasets"), ("list-services", "services"), ("list-bundles", "bundles")] {
        let (_, list) = call_task(client, task, serde_json::json!({})).await?;
        for object in list[field].as_array().into_iter().flatten() {
            // A bundle list holds views: {bundle, services}.
            let object = object.get("bundle").unwrap_or(object);
            revision = revision.max(object["mod_index"].as_u64().unwrap_or(0));
        }
    }
    let (_, defaults) = call_task(client, "get-default-options", serde_json::json!({})).await?;
    Ok(revision.max(defaults["mod_index"].as_u64().unwrap_or(0)))
}

/// Writes what differs, in order, each a compare-and-swap on the index the plan read; stops at
/// the first refusal and says what was written before it.
async fn apply_steps(cli: &Cli, client: &Client, steps: &[manifest::Step]) -> Result<(), Failure> {
    let mut done = Vec::new();
    for step in steps.iter().filter(|s| s.op != manifest::Op::Unchanged) {
        let mut args = step.fields.clone();
        args["mod_index"] = serde_json::json!(step.mod_index);
        match call_task(client, step.kind.update_task(), args).await {
            Ok((_, written)) => {
                let index = written.get("bundle").unwrap_or(&written)["mod_index"].as_u64().unwrap_or(0);
                if cli.output != Output::Json {
                    println!("{} {} (index {index})", step.op.sign(), step.name());
                }
                done.push(serde_json::json!({ "op": step.op.sign(), "kind": step.kind.name(), "id": step.id, "mod_index": index }));
            }
            Err(f) => {
                let written: Vec<String> = done
                    .iter()
                    .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or(""), d["id"].as_str().unwrap_or("")))
                    .collect();
                return Err(Failure {
                    code: f.code,
                    message: format!(
                        "{}: {}; written before it: {}",
                        step.name(),
                        f.message,
                        if written.is_empty() { "nothing".into() } else { written.join(", ") }
                    ),
                });
            }
        }
    }
    match cli.output {
        Output::Json => println!("{}", render::json(&serde_json::json!({ "applied": done }))),
        Output::Table | Output::Wide if done.is_empty() => println!("nothing to change"),
        Output::Table | Output::Wide => {}
    }
    Ok(())
}

/// Deletes what a file declares, bundles first; what is already gone is reported, not an error.
async fn delete_declared(cli: &Cli, client: &Client, declared: &[manifest::Declared]) -> Result<(), Failure> {
    let mut report = Vec::new();
    for object in declared.iter().rev() {
        let Some(task) = object.kind.delete_task() else { continue };
        let outcome = match call_task(client, task, serde_json::json!({ "id": object.id })).await {
            Ok(_) => "deleted",
            Err(f) if f.code == 4 => "already gone",
            Err(f) => {
                return Err(Failure {
                    code: f.code,
                    message: format!("{} {}: {}", object.kind.name(), object.id, f.message),
                })
            }
        };
        if cli.output != Output::Json {
            println!("- {}/{} ({outcome})", object.kind.name(), object.id);
        }
        report.push(serde_json::json!({ "kind": object.kind.name(), "id": object.id, "outcome": outcome }));
    }
    if cli.output == Output::Json {
        println!("{}", render::json(&serde_json::json!({ "deleted": report })));
    }
    Ok(())
}

fn parse_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("not an object".into()),
        Err(json) => match toml::from_str::<toml::Value>(text) {
            Ok(value) => serde_json::to_value(value).map_err(|e| e.to_string()),
            Err(toml) => Err(format!("neither JSON ({json}) nor TOML ({})", toml.message())),
        },
    }
}

async fn run_token(cli: &Cli, client: &Client, command: &TokenCommand) -> Result<(), Failure> {
    use serde_json::json;
    let (task, args) = match command {
        TokenCommand::Create { role, ttl, description } => {
            ("auth-token-create", json!({ "role": role, "ttl_seconds": ttl, "description": description }))
        }
        TokenCommand::List => ("auth-token-list", json!({})),
        TokenCommand::Revoke { id } => ("auth-token-revoke", json!({ "id": id })),
    };
    let (_, value) = call_task(client, task, args).await?;
    print(cli, &value);
    Ok(())
}

/// The most pages `cerana kv ls` follows (10,000 keys each).
const KV_LS_MAX_PAGES: usize = 100;

async fn run_kv(cli: &Cli, client: &Client, command: &KvCommand) -> Result<(), Failure> {
    use serde_json::json;
    match command {
        KvCommand::Members => {
            let (_, value) = call_task(client, "kv-members", json!({})).await?;
            print(cli, &value);
        }
        KvCommand::Get { key } => {
            let (_, value) = call_task(client, "kv-get", json!({ "key": key })).await?;
            print(cli, &value);
        }
        KvCommand::Set { key, value, index } => {
            let (task, args) = match index {
                Some(index) => ("kv-update", json!({ "key": key, "value": value, "index": index })),
                None => ("kv-set", json!({ "key": key, "value": value })),
            };
            let (_, value) = call_task(client, task, args).await?;
            print(cli, &value);
        }
        KvCommand::Rm { key, recursive, index } => {
            let (task, args) = match index {
                Some(index) => ("kv-remove", json!({ "key": key, "index": index })),
                None => ("kv-delete", json!({ "key": key, "recursive": recursive })),
            };
            let (_, value) = call_task(client, task, args).await?;
            print(cli, &value);
        }
        KvCommand::Ls { prefix, values } => {
            let task = if *values { "kv-getall" } else { "kv-keys" };
            let field = if *values { "entries" } else { "keys" };
            let (mut all, mut after, mut index) = (Vec::new(), None::<String>, serde_json::Value::Null);
            for _ in 0..KV_LS_MAX_PAGES {
                let mut args = json!({ "prefix": prefix });
                if let Some(after) = &after {
                    args["after"] = json!(after);
                }
                let (_, page) = call_task(client, task, args).await?;
                let items = page[field].as_array().cloned().unwrap_or_default();
                after = items.last().and_then(|last| last.get("key").unwrap_or(last).as_str()).map(str::to_owned);
                all.extend(items);
                index = page["index"].clone();
                if page["more"] != true || after.is_none() {
                    break;
                }
            }
            let listing = if *values {
                json!({ "entries": all, "index": index })
            } else {
                json!({ "keys": all.into_iter().map(|k| json!({ "key": k })).collect::<Vec<_>>(), "index": index })
            };
            print(cli, &listing);
        }
        KvCommand::Watch { prefix, from } => {
            let mut args = json!({ "prefix": prefix });
            if let Some(from) = from {
                args["from_index"] = json!(from);
            }
            let (response, started) = call_task(client, "kv-watch", args).await?;
            eprintln!("watching {prefix:?} from index {}", started["start_index"]);
            let handle = response
                .stream
                .clone()
                .ok_or_else(|| Failure::other(anyhow::anyhow!("kv-watch returned no stream")))?;
            // Values come from anyone who can write the store: each line is re-encoded so that
            // no terminal control reaches the screen raw.
            let (writer, reader) = tokio::io::duplex(64 * 1024);
            let drain = drain_stream_into(&cli.socket, http_of(client), handle, Box::new(writer));
            let print_lines = async {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(reader).lines();
                while let Some(line) = lines.next_line().await? {
                    match serde_json::from_str::<serde_json::Value>(&line) {
                        Ok(event) => println!("{}", render::json_line(&event)),
                        Err(_) => println!("{}", render::escape(&line)),
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            let (drained, printed) = tokio::join!(drain, print_lines);
            drained.and(printed).map_err(Failure::other)?;
        }
    }
    Ok(())
}

fn http_of(client: &Client) -> Option<HttpClient> {
    match client {
        Client::Http(http) => Some(HttpClient::clone(http)),
        Client::Unix(_) => None,
    }
}

async fn feed_stream(socket: PathBuf, http: Option<HttpClient>, id: StreamId, source: String) -> anyhow::Result<()> {
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send + Sync> = if source == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&source).await.with_context(|| format!("opening {source}"))?)
    };
    match http {
        None => {
            let conn = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await?;
            let mut writer = ChunkWriter::new(conn);
            writer.copy_from(&mut input).await?;
            writer.finish().await?;
        }
        Some(http) => {
            use futures_util::TryStreamExt;
            use http_body_util::BodyExt;
            let stream = tokio_util_like::reader_stream(input).map_ok(hyper::body::Frame::data);
            http.stream_put(id, BodyExt::boxed(http_body_util::StreamBody::new(stream))).await?;
        }
    }
    Ok(())
}

async fn drain_stream(
    socket: &std::path::Path,
    http: Option<HttpClient>,
    handle: StreamHandle,
    target: &str,
) -> anyhow::Result<()> {
    let out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if target == "-" {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(tokio::fs::File::create(target).await.with_context(|| format!("creating {target}"))?)
    };
    drain_stream_into(socket, http, handle, out).await
}

async fn drain_stream_into(
    socket: &std::path::Path,
    http: Option<HttpClient>,
    handle: StreamHandle,
    mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    match http {
        None => {
            let conn = open_stream(socket, handle, StreamDirection::Get).await?;
            ChunkReader::new(conn).copy_to(&mut out).await?;
        }
        Some(http) => {
            use http_body_util::BodyExt;
            let mut body = http.stream_get(handle.id).await?;
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the stream broke off")?;
                if let Ok(data) = frame.into_data() {
                    out.write_all(&data).await?;
                }
            }
            out.flush().await?;
        }
    }
    Ok(())
}

/// Reading an `AsyncRead` as a stream of byte chunks.
mod tokio_util_like {
    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub fn reader_stream<R: AsyncRead + Unpin + Send + Sync + 'static>(
        reader: R,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync {
        futures_util::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            let mut buf = vec![0u8; 256 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(reader)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    /// The top README's walk-through declares its service and bundle with `cerana set`: each
    /// file in it must be an object these tasks take.
    #[test]
    fn the_readme_walkthrough_files_are_valid_objects() {
        use cerana_protocol::tasks::clusterconf::{Bundle, Service, Strict};
        let readme = include_str!("../../README.md");
        let mut files = readme.split("<<'TOML'\n").skip(1).map(|rest| rest.split("\nTOML\n").next().unwrap());
        let service = parse_object(files.next().expect("a service file")).unwrap();
        let service: Strict<Service> = serde_json::from_value(service).unwrap();
        service.0.validate().unwrap();
        let bundle = parse_object(files.next().expect("a bundle file")).unwrap();
        let bundle: Strict<Bundle> = serde_json::from_value(bundle).unwrap();
        bundle.0.validate().unwrap();
        assert_eq!((bundle.0.redundancy, bundle.0.services["a"].id.to_string()), (2, service.0.id.to_string()));
    }

    use super::*;

    #[test]
    fn lifetimes_read_with_their_unit() {
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("30d"), Ok(2_592_000));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert!(parse_ttl("1w").unwrap_err().contains("unit"));
        assert!(parse_ttl("h").unwrap_err().contains("not a lifetime"));
        assert!(parse_ttl("99999999999999999999d").is_err());
        assert!(parse_ttl(&format!("{}d", u64::MAX / 2)).unwrap_err().contains("too long"));
    }

    #[test]
    fn token_commands_parse() {
        let cli = Cli::try_parse_from(["cerana", "auth", "token", "create", "--role", "read", "--ttl", "24h"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Auth(AuthCommand::Token(TokenCommand::Create {
                role: cerana_protocol::tasks::auth::Role::Read,
                ttl: 86_400,
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["cerana", "auth", "token", "create", "--role", "root", "--ttl", "1h"]).is_err());
    }

    #[test]
    fn join_token_commands_parse() {
        let cli = Cli::try_parse_from(["cerana", "node", "token", "create"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Token(JoinTokenCommand::Create { ttl: 600, mac: None }))
        ));
        let cli =
            Cli::try_parse_from(["cerana", "node", "token", "create", "--ttl", "1h", "--mac", "52:54:00:12:34:56"])
                .unwrap();
        let Command::Node(NodeCommand::Token(JoinTokenCommand::Create { ttl, mac: Some(mac) })) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((ttl, mac.to_string()), (3600, "52:54:00:12:34:56".to_owned()));
        assert!(Cli::try_parse_from(["cerana", "node", "token", "create", "--mac", "52:54:00"]).is_err());
    }
}
