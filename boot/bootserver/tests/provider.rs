//! `boot-events`, `boot-machines`, `boot-dhcp` and `boot-join-token-create` through a real
//! (in-process) coordinator.

use cerana_bootserver::dhcp_control::DhcpControl;
use cerana_bootserver::events::{EventLog, EventSource};
use cerana_bootserver::join_tokens::{JoinKind, JoinTokens, Redeemer};
use cerana_bootserver::provider::JoinIssuer;
use cerana_protocol::tasks::boot::{
    BootDhcp, BootDhcpArgs, BootDhcpMode, BootEventKind, BootEvents, BootEventsArgs, BootJoinTokenCreate, BootMachines,
    BootStage, JoinTokenCreateArgs, MacAddr,
};
use cerana_protocol::NoArgs;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn boot_tasks_answer_from_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("coordinator.sock");
    let _coordinator = cerana_coordinator::Coordinator::start(cerana_coordinator::Config::new(&socket)).await.unwrap();
    let events = Arc::new(EventLog::new());
    let (a, b) = (MacAddr([0x52, 0x54, 0, 0, 0, 2]), MacAddr([0x52, 0x54, 0, 0, 0, 3]));
    events.record(
        EventSource::Dhcp,
        a,
        BootEventKind::DhcpAck {
            ip: Some(Ipv4Addr::new(10, 0, 0, 100)),
            bootfile: Some("undionly.kpxe".into()),
            lease_secs: Some(60),
        },
    );
    events.record(
        EventSource::Dhcp,
        a,
        BootEventKind::TftpFile { path: "undionly.kpxe".into(), bytes: 70_000, complete: true },
    );
    events.record(EventSource::Dhcp, b, BootEventKind::DhcpNak { reason: "wrong network".into() });
    let boot = cerana_bootserver::dhcp::BootFiles::new(&Default::default(), Ipv4Addr::LOCALHOST, 80);
    // No pool and DHCP off: switching is checked here, serving in tests/netns.rs.
    let dhcp = Arc::new(DhcpControl::new("lo".into(), Ipv4Addr::LOCALHOST, None, None, boot, events.clone()).0);
    let tokens = Arc::new(JoinTokens::load(None, 600));
    let joins = JoinIssuer {
        tokens: tokens.clone(),
        check_in_at: Some("http://10.0.0.1".into()),
        cluster_ips: "10.0.0.1".into(),
    };
    let provider = cerana_bootserver::provider::provider(events.clone(), dhcp.clone(), joins);
    let serving = tokio::spawn({
        let socket = socket.clone();
        async move { provider.serve(socket).await }
    });

    let client = cerana_client::UnixClient::connect(&socket, "test").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let timeline = loop {
        match client.run::<BootEvents>(&BootEventsArgs { mac: Some(a), limit: None }).await {
            Ok(result) => break result,
            Err(e) => {
                assert!(Instant::now() < deadline, "boot-events never became available: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let kinds: Vec<_> =
        timeline.events.iter().map(|e| serde_json::to_value(&e.kind).unwrap()["event"].clone()).collect();
    assert_eq!(kinds, ["dhcp_ack", "tftp_file"]);
    let machines = client.run::<BootMachines>(&NoArgs {}).await.unwrap().machines;
    assert_eq!(machines.len(), 2);
    assert_eq!(
        (machines[0].mac, machines[0].stage, machines[0].ip),
        (a, BootStage::Firmware, Some(Ipv4Addr::new(10, 0, 0, 100)))
    );
    assert_eq!(machines[1].stage, BootStage::Dhcp);

    let off =
        client.run::<BootDhcp>(&BootDhcpArgs { mode: BootDhcpMode::Off, import_leases_from: None }).await.unwrap();
    assert_eq!((off.previous, off.mode, off.imported_leases), (BootDhcpMode::Off, BootDhcpMode::Off, 0));
    let no_pool =
        client.run::<BootDhcp>(&BootDhcpArgs { mode: BootDhcpMode::Full, import_leases_from: None }).await.unwrap_err();
    assert!(no_pool.to_string().contains("needs an address pool"), "{no_pool}");
    let misplaced = BootDhcpArgs { mode: BootDhcpMode::Off, import_leases_from: Some("http://127.0.0.1:9".into()) };
    let err = client.run::<BootDhcp>(&misplaced).await.unwrap_err();
    assert!(err.to_string().contains("only applies to full mode"), "{err}");
    assert_eq!(dhcp.mode(), cerana_bootserver::config::DhcpMode::Off, "failed switches change nothing");

    // An operator's join token for a USB machine: its command line, spendable once by that MAC.
    let created =
        client.run::<BootJoinTokenCreate>(&JoinTokenCreateArgs { ttl_seconds: 600, mac: Some(b) }).await.unwrap();
    assert!(created.cmdline.starts_with("cerana.boot_server=http://10.0.0.1/ cerana.cluster_ips=10.0.0.1 "));
    assert!(created.cmdline.ends_with(&format!("cerana.join_token={} cerana.mgmt_mac={b}", created.token)));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let record =
        tokens.check(Some(&created.token), &Redeemer { mac: b, uuid: None, public_key: "04aa" }, now).await.unwrap();
    assert_eq!((record.kind, record.mac, &record.id), (JoinKind::Operator, Some(b), &created.id));
    assert!(tokens
        .check(Some(&created.token), &Redeemer { mac: a, uuid: None, public_key: "04aa" }, now)
        .await
        .is_err());
    for ttl_seconds in [0, 59, 86_401] {
        let err = client.run::<BootJoinTokenCreate>(&JoinTokenCreateArgs { ttl_seconds, mac: None }).await.unwrap_err();
        assert!(err.to_string().contains("ttl_seconds"), "{err}");
    }
    serving.abort();
}
