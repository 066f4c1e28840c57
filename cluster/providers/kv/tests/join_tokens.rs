//! Join tokens in the cluster store (issue #17), through the boot server's real store client:
//! the node's coordinator socket, the `cerana-kv` provider, a 3-member etcd. A token minted by
//! one boot server is redeemed at another exactly once, however many race for it; without a
//! quorum nothing is minted or spent; long-expired records are swept.

mod common;

use cerana_bootserver::join_store::{KvJoinStore, PREFIX};
use cerana_bootserver::join_tokens::{JoinRefusal, JoinTokens, Redeemer, REMEMBER_SECS};
use cerana_protocol::tasks::boot::MacAddr;
use cerana_testbed::require_ok;
use common::{etcdctl, Lab};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn tokens(lab: &Lab, redeems_itself: bool) -> Arc<JoinTokens> {
    Arc::new(JoinTokens::load(None, 600).with_store(Arc::new(KvJoinStore::new(&lab.socket)), redeems_itself))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_at_one_boot_server_is_spent_once_at_any_other() {
    let mut lab = require_ok!(Lab::start(Duration::from_secs(4)).await);
    let mac: MacAddr = "52:54:00:c1:00:05".parse().unwrap();
    let (replica, issuers) = (tokens(&lab, false), [tokens(&lab, true), tokens(&lab, true), tokens(&lab, true)]);
    let token = replica.mint(mac, None, Some("10.99.0.105".parse().unwrap()), now()).await.unwrap().reveal();
    let stored = etcdctl(&lab, &[OsStr::new("get"), OsStr::new("--prefix"), OsStr::new(PREFIX)]);
    let stored = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(stored.contains("\"address\":\"10.99.0.105\""), "{stored}");
    assert!(!stored.contains(&token[token.len() - 64..]), "the secret is never stored: {stored}");

    // Three boot servers redeem it at once for three keys: one wins, the others read it spent.
    let keys = ["04aa", "04bb", "04cc"];
    let mut racing = Vec::new();
    for (issuer, key) in issuers.iter().zip(keys) {
        let (issuer, token) = (issuer.clone(), token.clone());
        racing.push(tokio::spawn(async move {
            issuer.redeem(Some(&token), &Redeemer { mac, uuid: None, public_key: key }, now()).await
        }));
    }
    let mut outcomes = Vec::new();
    for task in racing {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    for lost in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(matches!(lost, JoinRefusal::Used { .. }), "{lost}");
    }
    let winner = keys[outcomes.iter().position(|o| o.is_ok()).unwrap()];
    // The winner's retry (its answer lost) works anywhere; a replay for another key nowhere.
    issuers[2].redeem(Some(&token), &Redeemer { mac, uuid: None, public_key: winner }, now()).await.unwrap();
    let replay = replica.check(Some(&token), &Redeemer { mac, uuid: None, public_key: "04dd" }, now()).await;
    assert!(matches!(replay, Err(JoinRefusal::Used { .. })), "{replay:?}");

    // Long-expired records are swept, live and recently spent ones kept.
    let old = replica.mint(mac, None, None, now() - 600 - REMEMBER_SECS - 5).await.unwrap();
    let other: MacAddr = "52:54:00:c1:00:06".parse().unwrap();
    let live = replica.mint(other, None, None, now()).await.unwrap().reveal();
    assert_eq!(issuers[0].sweep(now()).await.unwrap(), 1);
    let old_key = format!("{PREFIX}{}", old.id());
    assert!(etcdctl(&lab, &[OsStr::new("get"), OsStr::new(&old_key)]).stdout.is_empty());
    issuers[0].check(Some(&live), &Redeemer { mac: other, uuid: None, public_key: "04ee" }, now()).await.unwrap();
    issuers[0].check(Some(&token), &Redeemer { mac, uuid: None, public_key: winner }, now()).await.unwrap();

    // No quorum: a replica mints nothing, a redemption is put off (nothing spent); the CA's
    // own server keeps a token itself meanwhile.
    lab.etcd.kill(0);
    lab.etcd.kill(1);
    let refused = replica.mint(other, None, None, now()).await;
    assert!(refused.is_err(), "{:?}", refused.map(|t| t.reveal()));
    let put_off = issuers[1].redeem(Some(&live), &Redeemer { mac: other, uuid: None, public_key: "04ee" }, now()).await;
    assert!(matches!(put_off, Err(JoinRefusal::Store(_))), "{put_off:?}");
    let local = issuers[1].mint(other, None, None, now()).await.expect("kept locally").reveal();
    issuers[1].redeem(Some(&local), &Redeemer { mac: other, uuid: None, public_key: "04ff" }, now()).await.unwrap();
    lab.etcd.restart(0).unwrap();
    lab.etcd.restart(1).unwrap();
    let mut spent = None;
    for _ in 0..40 {
        match issuers[1].redeem(Some(&live), &Redeemer { mac: other, uuid: None, public_key: "04ee" }, now()).await {
            Err(JoinRefusal::Store(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            other => {
                spent = Some(other);
                break;
            }
        }
    }
    spent.expect("the quorum came back within 20 s").expect("the put-off redemption, once the store is back");
}
