//! Init's life: early boot (on a machine), then one synchronous event loop over a signalfd,
//! the control socket, the services' pipes and the power button, until a shutdown completes.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use cerana_protocol::events::{LifecycleEvent, ShutdownAction};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::boot;
use crate::cmdline::{self, Settings};
use crate::control::{ControlServer, Followup};
use crate::modules::{self, KernelLoader};
use crate::options::{self, Options};
use crate::output::Output;
use crate::power;
use crate::supervisor::{PipeKind, RestScope, Supervisor};
use crate::table::{self, Table};

/// The table used with `cerana.rescue`: a shell on the console, restarted when it exits.
pub const RESCUE_TABLE: &str = r#"
[service.rescue-shell]
description = "cerana.rescue: a shell on the console instead of the node's services"
command = "sh"
console = true
restart = "always"
restart_delay_ms = 500
"#;

/// Longest poll sleep when nothing is due (a safety net; every real wake-up is an fd).
const IDLE_WAKEUP: Duration = Duration::from_secs(60);
/// Panics in a row after which init stops running the loop body and only reaps.
const PANIC_LIMIT: u32 = 20;

/// How this init runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a machine: mounts, identity, modules, reboot(2).
    Machine,
    /// Host tests: no changes to the machine; exits when the shutdown is done.
    Contained { pid1: bool },
}

/// Runs init; returns the process exit code (only ever off a machine).
pub fn run(args: Vec<String>, started: Instant) -> i32 {
    let pid1 = std::process::id() == 1;
    let (opts, arg_problems) = options::parse(args);
    if opts.help {
        println!("{}", options::USAGE);
        return 0;
    }
    if !arg_problems.is_empty() && !pid1 {
        for p in &arg_problems {
            eprintln!("cerana-init: {p}");
        }
        eprintln!("{}", options::USAGE);
        return 2;
    }
    let mode = if pid1 && !opts.no_mount { Mode::Machine } else { Mode::Contained { pid1 } };

    let mut boot_problems = Vec::new();
    if mode == Mode::Machine {
        boot_problems = boot::mount_basics();
    }
    boot::ensure_std_fds();
    let console = match (mode, &opts.console) {
        (Mode::Machine, path) => {
            boot::take_console(path.as_deref().unwrap_or(Path::new(boot::CONSOLE))).or_else(|_| stderr_copy())
        }
        (Mode::Contained { .. }, Some(path)) => boot::open_console(path),
        (Mode::Contained { .. }, None) => stderr_copy(),
    };
    let Ok(console) = console else {
        // Nowhere to write: still supervise (events may go to the file).
        return run_without_console(opts, mode, started);
    };
    install_panic_hook();
    let events_file = opts.events.as_deref().and_then(|p| Output::open_events_file(p).ok());
    let mut out = Output::new(console, events_file, started);
    for p in &arg_problems {
        out.warn(&format!("ignoring argument: {p}"));
    }
    for p in &boot_problems {
        out.error(&format!("early boot: {p}"));
    }
    out.event(LifecycleEvent::EarlyBootDone { uptime_ms: out.uptime_ms() });
    supervise(opts, mode, out)
}

fn stderr_copy() -> std::io::Result<File> {
    Ok(File::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

fn run_without_console(opts: Options, mode: Mode, started: Instant) -> i32 {
    let sink = File::options().write(true).open("/dev/null");
    match sink {
        Ok(null) => {
            let events = opts.events.as_deref().and_then(|p| Output::open_events_file(p).ok());
            supervise(opts, mode, Output::new(null, events, started))
        }
        Err(_) => reap_forever(),
    }
}

/// The panic message goes to the console (stderr) and the kernel log; the loop catches the
/// unwind and carries on.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("cerana-init: PANIC: {info}\n");
        let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
        if let Ok(kmsg) = File::options().write(true).open("/dev/kmsg") {
            let _ = nix::unistd::write(&kmsg, format!("<2>{msg}").as_bytes());
        }
    }));
}

fn read_settings(opts: &Options, mode: Mode, out: &mut Output) -> Settings {
    let source = match (&opts.cmdline, mode) {
        (Some(path), _) => Some(path.clone()),
        (None, Mode::Machine) => Some("/proc/cmdline".into()),
        (None, Mode::Contained { .. }) => None,
    };
    let text = match &source {
        Some(path) => std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|e| {
            out.error(&format!("cannot read {}: {e}", path.display()));
            String::new()
        }),
        None => String::new(),
    };
    let parsed = cmdline::parse(&text);
    out.set_level(parsed.settings.log);
    for p in &parsed.problems {
        out.warn(&format!("kernel command line: {p}"));
    }
    out.event(LifecycleEvent::CmdlineParsed { warnings: parsed.problems.iter().map(ToString::to_string).collect() });
    parsed.settings
}

/// Identity, loopback (machine only) and the API token.
fn node_setup(settings: &Settings, opts: &Options, mode: Mode, out: &mut Output) {
    if mode == Mode::Machine {
        if let Err(e) = crate::net::link_up("lo") {
            out.error(&format!("cannot bring lo up: {e}"));
        }
        let uuid = boot::read_product_uuid();
        let id = boot::Identity::derive(uuid.as_deref(), settings.hostname.as_ref(), boot::random_bytes());
        out.info(&format!(
            "machine-id {} (from {}), hostid {:08x}, hostname {}",
            id.machine_id, id.source, id.hostid, id.hostname
        ));
        if let Err(e) = id.write_files(Path::new("/")) {
            out.error(&format!("cannot write /etc identity files: {e}"));
        }
        if let Err(e) = nix::unistd::sethostname(&id.hostname) {
            out.error(&format!("sethostname: {e}"));
        }
    }
    // Without a token on the command line a machine gets a random one nobody knows: the
    // coordinator starts the same way, and its HTTP API stays closed to the network.
    let token = settings.api_token.clone().or_else(|| {
        (mode == Mode::Machine).then(|| {
            let hex: String =
                boot::random_bytes().iter().chain(boot::random_bytes().iter()).map(|b| format!("{b:02x}")).collect();
            hex.parse().expect("64 hex digits are a valid token")
        })
    });
    if let Some(token) = &token {
        match boot::write_api_token(&opts.run_dir, token) {
            Ok(()) => out.info(&format!("API token written to {}/api-token", opts.run_dir.display())),
            Err(e) => out.error(&format!("cannot write the API token: {e}")),
        }
    }
}

fn load_kernel_modules(settings: &Settings, opts: &Options, mode: Mode, out: &mut Output) {
    let dir = match (&opts.modules_dir, mode) {
        (Some(d), _) => d.clone(),
        (None, Mode::Machine) => match nix::sys::utsname::uname() {
            Ok(u) => Path::new("/lib/modules").join(u.release()),
            Err(_) => return,
        },
        (None, Mode::Contained { .. }) => return,
    };
    let mut wanted = Vec::new();
    match std::fs::read_to_string(&opts.module_list) {
        Ok(text) => {
            let (names, problems) = modules::read_module_list(&text);
            for p in problems {
                out.error(&format!("{}: {p}", opts.module_list.display()));
            }
            wanted.extend(names);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => out.error(&format!("cannot read {}: {e}", opts.module_list.display())),
    }
    wanted.extend(settings.modules.iter().cloned());
    if wanted.is_empty() {
        return;
    }
    let report = modules::load_modules(&dir, &wanted, &KernelLoader, out);
    out.info(&format!("modules: {} loaded, {} failed", report.loaded.len(), report.failed.len()));
}

/// How long init waits for the management NIC's driver to create the interface.
const MGMT_NIC_WAIT: Duration = Duration::from_secs(5);

/// Configures the management interface when the command line gives an address.
fn mgmt_network(settings: &Settings, out: &mut Output) {
    let Some(address) = settings.mgmt_ip else {
        if settings.mgmt_mac.is_some() || settings.mgmt_gw.is_some() {
            out.warn("cerana.mgmt_mac/mgmt_gw without cerana.mgmt_ip: management interface left alone");
        }
        return;
    };
    let sys = Path::new("/sys/class/net");
    let result = crate::net::find_mgmt_interface(sys, settings.mgmt_mac.as_ref(), MGMT_NIC_WAIT)
        .and_then(|iface| crate::net::configure(&iface, address, settings.mgmt_gw));
    match result {
        Ok(cfg) => {
            let via = cfg.gateway.map(|g| format!(", default route via {g}")).unwrap_or_default();
            out.info(&format!("management interface {}: {}{via}", cfg.interface, cfg.address));
            // The node routes between its bundles' namespaces and the management network.
            if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
                out.warn(&format!("cannot turn IPv4 forwarding on, bundles are not reachable: {e}"));
            }
            out.event(LifecycleEvent::NetworkConfigured {
                interface: cfg.interface,
                address: cfg.address.to_string(),
                gateway: cfg.gateway.map(|g| g.to_string()),
            });
        }
        Err(e) => {
            out.error(&format!("management interface: {e}"));
            out.event(LifecycleEvent::NetworkFailed { error: e.to_string() });
        }
    }
}

fn load_table(settings: &Settings, opts: &Options, out: &mut Output) -> Table {
    if settings.rescue {
        out.warn("cerana.rescue: starting a shell on the console instead of the services");
        return table::load(RESCUE_TABLE, settings);
    }
    match std::fs::read_to_string(&opts.table) {
        Ok(text) => table::load(&text, settings),
        Err(e) => {
            let mut t = Table::default();
            t.problems.push(table::TableProblem {
                service: None,
                message: format!("cannot read {}: {e}", opts.table.display()),
            });
            t
        }
    }
}

fn signal_set() -> SigSet {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        mask.add(sig);
    }
    mask
}

/// What each polled fd belongs to.
#[derive(Debug, Clone, Copy)]
enum Role {
    Signals,
    Listener,
    Clients,
    Pipe(usize, PipeKind),
    Button(usize),
}

fn supervise(opts: Options, mode: Mode, mut out: Output) -> i32 {
    // Blocked before anything is spawned; signals arrive through the signalfd only.
    let mask = signal_set();
    if let Err(e) = mask.thread_block() {
        out.error(&format!("cannot block signals: {e}"));
    }
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC);
    if let Err(e) = &signals {
        out.error(&format!("signalfd: {e}; relying on periodic reaping"));
    }
    match mode {
        Mode::Machine => {
            // Ctrl-Alt-Del then sends SIGINT to init instead of rebooting at once.
            if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
                out.error(&format!("cannot route Ctrl-Alt-Del to init: {e}"));
            }
        }
        Mode::Contained { pid1: false } => {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                out.error(&format!("cannot become a child subreaper: {e}"));
            }
        }
        Mode::Contained { pid1: true } => {}
    }
    let settings = read_settings(&opts, mode, &mut out);
    node_setup(&settings, &opts, mode, &mut out);
    load_kernel_modules(&settings, &opts, mode, &mut out);
    if mode == Mode::Machine {
        mgmt_network(&settings, &mut out);
    }
    let table = load_table(&settings, &opts, &mut out);
    let rest_scope = match mode {
        Mode::Machine | Mode::Contained { pid1: true } => RestScope::AllProcesses,
        Mode::Contained { pid1: false } => RestScope::OwnChildren,
    };
    let console_for_shells = match (mode, &opts.console) {
        (_, Some(path)) => boot::open_console(path).ok(),
        (Mode::Machine, None) => std::fs::read_to_string("/sys/class/tty/console/active")
            .ok()
            .and_then(|active| boot::console_tty(&active))
            .and_then(|tty| boot::open_console(&tty).ok())
            .or_else(|| boot::open_console(Path::new(boot::CONSOLE)).ok()),
        (Mode::Contained { .. }, None) => None,
    };
    let mut sup = Supervisor::new(table, rest_scope, console_for_shells, &mut out);
    let socket = opts.control_socket();
    let mut control = match ControlServer::bind(&socket) {
        Ok(c) => Some(c),
        Err(e) => {
            out.error(&format!("control socket {}: {e}", socket.display()));
            None
        }
    };
    let mut buttons = match mode {
        Mode::Machine => power::open_power_buttons(),
        Mode::Contained { .. } => Vec::new(),
    };
    if mode == Mode::Machine && buttons.is_empty() {
        out.warn("no ACPI power button found (needs the button and evdev drivers); system_powerdown will not work");
    }
    sup.tick(&mut out);

    let mut panics = 0u32;
    loop {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop_once(&mut sup, &mut control, &mut buttons, signals.as_ref().ok(), &mut out)
        }));
        match step {
            Ok(Some(action)) => break finish(action, mode, control.take(), &mut out),
            Ok(None) => panics = 0,
            Err(_) => {
                panics += 1;
                out.error("recovered from a panic in the event loop (see above)");
                if panics >= PANIC_LIMIT {
                    out.error("panicking in a loop; only reaping from now on");
                    if mode == Mode::Machine {
                        reap_forever();
                    }
                    return 70;
                }
            }
        }
    }
}

/// One wake-up; returns the shutdown action once a shutdown has completed.
fn loop_once(
    sup: &mut Supervisor,
    control: &mut Option<ControlServer>,
    buttons: &mut [File],
    signals: Option<&SignalFd>,
    out: &mut Output,
) -> Option<ShutdownAction> {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut roles: Vec<Role> = Vec::new();
    let mut watch = |fd: RawFd, role: Role| {
        fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        roles.push(role);
    };
    if let Some(s) = signals {
        watch(s.as_raw_fd(), Role::Signals);
    }
    if let Some(c) = control.as_ref() {
        watch(c.listener_fd(), Role::Listener);
        for fd in c.client_fds() {
            watch(fd, Role::Clients);
        }
    }
    for (fd, i, kind) in sup.watched_fds() {
        watch(fd, Role::Pipe(i, kind));
    }
    for (i, b) in buttons.iter().enumerate() {
        watch(b.as_raw_fd(), Role::Button(i));
    }
    let now = Instant::now();
    let mut deadline = [sup.next_deadline(), control.as_ref().and_then(|c| c.next_deadline())]
        .into_iter()
        .flatten()
        .min()
        .map_or(IDLE_WAKEUP, |d| d.saturating_duration_since(now))
        .min(IDLE_WAKEUP);
    if signals.is_none() || sup.shutting_down() {
        deadline = deadline.min(Duration::from_millis(50));
    }
    let timeout_ms = deadline.as_millis().min(i32::MAX as u128) as i32;
    let timeout_ms = if timeout_ms == 0 && !deadline.is_zero() { 1 } else { timeout_ms };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    let mut reap = signals.is_none();
    let mut clients_ready = false;
    if n > 0 {
        for (pfd, role) in fds.iter().zip(&roles) {
            if pfd.revents == 0 {
                continue;
            }
            match *role {
                Role::Signals => {
                    if let Some(s) = signals {
                        while let Ok(Some(info)) = s.read_signal() {
                            let sig = Signal::try_from(info.ssi_signo as i32).ok();
                            match sig {
                                Some(Signal::SIGCHLD) => reap = true,
                                Some(Signal::SIGINT) => {
                                    sup.begin_shutdown(ShutdownAction::Reboot, "SIGINT (Ctrl-Alt-Del)", out)
                                }
                                Some(s @ (Signal::SIGTERM | Signal::SIGUSR1 | Signal::SIGUSR2 | Signal::SIGPWR)) => {
                                    sup.begin_shutdown(ShutdownAction::Poweroff, s.as_str(), out)
                                }
                                _ => {}
                            }
                        }
                    }
                }
                Role::Listener => {
                    if let Some(c) = control.as_mut() {
                        c.accept();
                        clients_ready = true;
                    }
                }
                Role::Clients => clients_ready = true,
                Role::Pipe(i, kind) => sup.on_readable(i, kind, out),
                Role::Button(i) => {
                    if power::read_press(&mut buttons[i]) {
                        sup.begin_shutdown(ShutdownAction::Poweroff, "ACPI power button", out);
                    }
                }
            }
        }
    }
    if reap {
        sup.reap(out);
    }
    if let Some(c) = control.as_mut() {
        if clients_ready || c.next_deadline().is_some_and(|d| d <= Instant::now()) {
            if let Followup::Shutdown(action) = c.service_clients(sup) {
                sup.begin_shutdown(action, "requested on the control socket", out);
            }
        }
    }
    if sup.shutting_down() {
        sup.reap(out);
    }
    sup.tick(out);
    sup.shutdown_finished()
}

/// After every service and process is gone: on a machine unmount and reboot(2); off it, exit.
fn finish(action: ShutdownAction, mode: Mode, control: Option<ControlServer>, out: &mut Output) -> i32 {
    drop(control);
    if mode != Mode::Machine {
        out.info("shutdown complete");
        out.event(LifecycleEvent::ShutdownComplete { action });
        return 0;
    }
    let busy = boot::unmount_all();
    if !busy.is_empty() {
        out.warn(&format!("still mounted (remounted read-only): {}", busy.join(" ")));
    }
    out.info("shutdown complete");
    out.event(LifecycleEvent::ShutdownComplete { action });
    nix::unistd::sync();
    let how = match action {
        ShutdownAction::Poweroff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        ShutdownAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let err = nix::sys::reboot::reboot(how).unwrap_err();
    out.error(&format!("reboot(2) failed: {err}"));
    reap_forever()
}

/// Last resort for PID 1: never exit (that would panic the kernel), keep reaping.
fn reap_forever() -> ! {
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
