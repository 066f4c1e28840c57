//! `boot-events` and `boot-machines` through a real (in-process) coordinator.

use cerana_bootserver::events::EventLog;
use cerana_protocol::tasks::boot::{BootEventKind, BootEvents, BootEventsArgs, BootMachines, BootStage, MacAddr};
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
    events.record(a, BootEventKind::DhcpAck { ip: Some(Ipv4Addr::new(10, 0, 0, 100)), bootfile: Some("undionly.kpxe".into()), lease_secs: Some(60) });
    events.record(a, BootEventKind::TftpFile { path: "undionly.kpxe".into(), bytes: 70_000, complete: true });
    events.record(b, BootEventKind::DhcpNak { reason: "wrong network".into() });
    let provider = cerana_bootserver::provider::provider(events.clone());
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
    let kinds: Vec<_> = timeline.events.iter().map(|e| serde_json::to_value(&e.kind).unwrap()["event"].clone()).collect();
    assert_eq!(kinds, ["dhcp_ack", "tftp_file"]);
    let machines = client.run::<BootMachines>(&NoArgs {}).await.unwrap().machines;
    assert_eq!(machines.len(), 2);
    assert_eq!((machines[0].mac, machines[0].stage, machines[0].ip), (a, BootStage::Firmware, Some(Ipv4Addr::new(10, 0, 0, 100))));
    assert_eq!(machines[1].stage, BootStage::Dhcp);
    serving.abort();
}
