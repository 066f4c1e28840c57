//! A cluster upgrades one node at a time: an older node must decode what a newer one sends back
//! (added result fields, added error codes) and keep refusing arguments it does not understand.

use crate::message::{FromCoordinator, Request, Response, ToCoordinator};
use crate::names::RequestId;
use crate::task::Task;
use crate::tasks::{coordinator, health, init, kvm, metrics, netns, service, zfs};
use crate::{ErrorCode, TaskError};
use serde_json::{json, Value};

/// Adds `"added_in_v2"` to the object at each JSON pointer in `at` ("" is the top level).
fn with_added_fields(mut value: Value, at: &[&str]) -> Value {
    for pointer in at {
        let object = value.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("{pointer}"));
        object.insert("added_in_v2".into(), json!({"nested": [1, 2]}));
    }
    value
}

/// What a newer node sends back for `T`: `output` with fields added at `at`, in a response
/// frame that itself carries an added field, decoded the way a client decodes it.
fn decode_as_older_caller<T: Task>(output: &T::Output, at: &[&str]) -> T::Output {
    let result = with_added_fields(serde_json::to_value(output).unwrap(), at);
    let id = RequestId::random();
    let frame = json!({"response": {"id": id, "result": result, "served_by": "v2"}});
    let FromCoordinator::Response(response) = serde_json::from_value(frame).unwrap() else { panic!("not a response") };
    assert_eq!(response.id, id);
    response.decode::<T::Output>().unwrap_or_else(|e| panic!("{}: {e}", T::NAME))
}

fn dataset() -> zfs::Dataset {
    zfs::Dataset {
        name: "data/x".into(),
        kind: zfs::DatasetType::Filesystem,
        guid: 7,
        creation: 1,
        used: 2,
        available: Some(3),
        referenced: 4,
        mountpoint: Some("/data/x".into()),
        mounted: Some(true),
        origin: None,
        volsize: None,
        device: None,
    }
}

#[test]
fn zfs_results_with_added_fields_decode() {
    let get = zfs::GetResult {
        dataset: dataset(),
        properties: [("compression".to_owned(), zfs::Property { value: "lz4".into(), source: "local".into() })].into(),
    };
    let back = decode_as_older_caller::<zfs::ZfsGet>(&get, &["", "/dataset", "/properties/compression"]);
    assert_eq!(back, get);
    let list = zfs::ListResult { datasets: vec![dataset(), dataset()] };
    assert_eq!(decode_as_older_caller::<zfs::ZfsList>(&list, &["", "/datasets/1"]), list);
    let name = zfs::NameResult { name: "data/x".into(), device: None };
    assert_eq!(decode_as_older_caller::<zfs::ZfsCreate>(&name, &[""]), name);
}

#[test]
fn kvm_and_service_results_with_added_fields_decode() {
    let vm = kvm::VmInfo {
        name: kvm::VmName::new("vm1").unwrap(),
        uuid: "u".into(),
        state: kvm::VmState::Running,
        uptime_seconds: Some(5),
        vcpus: 1,
        memory_mib: 128,
        virt_type: kvm::VirtType::Auto,
        hypervisor: kvm::Hypervisor::Tcg,
        disks: vec![kvm::DiskInfo {
            target: "vda".into(),
            source: kvm::DiskSource::File { path: "/var/lib/vm1.img".into() },
            path: "/var/lib/vm1.img".into(),
            read_only: false,
            created: true,
        }],
        nics: vec![],
        boot: vec![kvm::BootDevice::Disk],
        console_log: "/var/log/vm1".into(),
    };
    assert_eq!(decode_as_older_caller::<kvm::KvmGet>(&vm, &["", "/disks/0"]), vm);

    let info = service::ServiceInfo {
        id: "web".into(),
        bundle_id: "b1".into(),
        dataset: "data/web".into(),
        rootfs: service::RootfsKind::Zfs,
        rootfs_path: None,
        clone: None,
        cmd: vec!["/bin/httpd".into()],
        limits: service::Limits::default(),
        netns: None,
        restart: service::RestartPolicy::default(),
        state: service::ServiceState::Running,
        pid: Some(10),
        uptime_ms: Some(1),
        restarts: 0,
        last_exit: Some(service::ExitInfo { code: Some(0), signal: None, oom_killed: false, ran_ms: 3 }),
        last_error: None,
        cgroup: "cerana-services/b1.web".into(),
        health: Some(service::Health {
            healthy: true,
            checks: vec![service::CheckOutcome {
                task: "health-file".into(),
                report: Some(health::HealthReport {
                    status: health::HealthStatus::Pass,
                    reason: None,
                    message: "ok".into(),
                    elapsed_ms: 1,
                }),
                error: None,
            }],
        }),
        definition: None,
    };
    let at = ["", "/last_exit", "/health", "/health/checks/0", "/health/checks/0/report"];
    assert_eq!(decode_as_older_caller::<service::ServiceGet>(&info, &at), info);
}

#[test]
fn coordinator_metrics_and_netns_results_with_added_fields_decode() {
    let entry = coordinator::JournalEntry {
        id: RequestId::random(),
        task: zfs::ZfsGet::name(),
        state: coordinator::TaskState::Failed,
        caller: "unix:pid=1".into(),
        provider: None,
        forwarded_to: None,
        parent: None,
        accepted_at_ms: 1,
        finished_at_ms: Some(2),
        duration_us: Some(1000),
        error: Some(TaskError::new(ErrorCode::NotFound, "gone")),
        result: None,
        result_omitted: None,
    };
    let back = decode_as_older_caller::<coordinator::CoordinatorTaskGet>(&entry, &["", "/error"]);
    assert_eq!((back.id, back.error.as_ref()), (entry.id, entry.error.as_ref()));

    // A history page, with a result the journal did not keep for a reason this version lacks.
    let omitted = coordinator::ResultOmitted { bytes: 70_000, reason: coordinator::OmittedReason::TooLarge };
    let page = coordinator::HistoryResult {
        entries: vec![coordinator::JournalEntry { result_omitted: Some(omitted.clone()), ..entry }],
        next_before: Some(7),
    };
    let at = ["", "/entries/0", "/entries/0/result_omitted"];
    let back = decode_as_older_caller::<coordinator::CoordinatorHistory>(&page, &at);
    assert_eq!((back.next_before, back.entries[0].result_omitted.as_ref()), (Some(7), Some(&omitted)));
    let newer: coordinator::ResultOmitted = serde_json::from_str(r#"{"bytes":1,"reason":"compressed"}"#).unwrap();
    assert_eq!(newer.reason, coordinator::OmittedReason::Other);

    let cpu = metrics::CpuMetrics {
        info: metrics::CpuInfo { model: "x".into(), logical_cpus: 2, mhz: None },
        load: metrics::LoadAverage { load_1m: 0.5, load_5m: 0.25, load_15m: 0.0 },
        times: vec![],
    };
    assert_eq!(decode_as_older_caller::<metrics::MetricsCpu>(&cpu, &["", "/info", "/load"]), cpu);

    let empty = crate::NoOutput {};
    assert_eq!(decode_as_older_caller::<netns::NetnsLinkDelete>(&empty, &[""]), empty);
}

#[test]
fn an_error_with_a_code_this_version_does_not_know_is_relayed_unchanged() {
    let id = RequestId::random();
    let frame = json!({"response": {"id": id, "error": {
        "code": "quota_exceeded", "message": "over quota", "node": "http://n2:8080", "retry_after_ms": 5
    }}});
    let FromCoordinator::Response(response) = serde_json::from_value(frame).unwrap() else { panic!("not a response") };
    let err = response.decode::<zfs::NameResult>().unwrap_err();
    assert_eq!(err.code, ErrorCode::Other("quota_exceeded".into()));
    assert_eq!(err.message, "over quota");
    // An older node relays it (to its own caller, or into its journal) with the code kept.
    let relayed = serde_json::to_value(Response::err(id, err)).unwrap();
    assert_eq!(relayed["error"]["code"], "quota_exceeded");
    let again: Response = serde_json::from_value(relayed).unwrap();
    assert_eq!(again.error().unwrap().code.as_str(), "quota_exceeded");

    // A known code still decodes to its variant.
    let known = json!({"id": id, "error": {"code": "name_too_long", "message": "x"}});
    let known: Response = serde_json::from_value(known).unwrap();
    assert_eq!(known.error().unwrap().code, ErrorCode::NameTooLong);

    // Init's control socket relays codes the same way.
    let reply: init::ControlReply =
        serde_json::from_str(r#"{"error":{"code":"frozen","message":"m","since_ms":1}}"#).unwrap();
    let init::ControlReply::Error { code, .. } = &reply else { panic!("{reply:?}") };
    assert_eq!(code, &ErrorCode::Other("frozen".into()));
    assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"error":{"code":"frozen","message":"m"}}"#);
}

#[test]
fn arguments_with_an_unknown_field_are_still_refused() {
    let refused = |task: &str, args: Value| {
        let info = crate::tasks::lookup(task).unwrap();
        let err = (info.check_args)(&args.to_string()).expect_err(task);
        assert!(err.contains("unknown field"), "{task}: {err}");
    };
    refused("zfs-create", json!({"name": "data/x", "compresion": "lz4"}));
    refused(
        "kvm-define",
        json!({"name": "vm1", "vcpus": 1, "memory_mib": 128,
               "disks": [{"source": {"file": {"path": "/x", "sparse": false}}}]}),
    );
    refused(
        "service-create",
        json!({"id": "web", "bundle_id": "b1", "dataset": "d", "cmd": ["x"], "restart": {"mode": "never", "tries": 1}}),
    );
    refused("netns-veth-add", json!({"end": {"name": "a", "mtu": 1}, "peer": {"name": "b"}}));
    refused("coordinator-history", json!({"limit": 1, "since": 0}));
    refused("metrics-cpu", json!({"per_cpu": true}));

    // The envelope a coordinator accepts is strict too.
    let request = serde_json::to_value(Request::for_task::<zfs::ZfsGet>(&zfs::NameArgs { name: "d".into() }).unwrap());
    let mut request = request.unwrap();
    request["priority"] = json!(1);
    let err = serde_json::from_value::<ToCoordinator>(json!({ "request": request })).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
