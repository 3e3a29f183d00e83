//! What is particular to the sled backend: the format version and background durability.

use serde_json::json;
use statebase_core::{CreateSession, StateBase, StateWrite};
use statebase_sled::{Durability, SledError, SledOptions, SledStore, FORMAT_VERSION};

/// The raw database under a store just dropped in this test (its lock may still be held).
fn raw(path: &std::path::Path) -> sled::Db {
    statebase_sled::open_when_free(&sled::Config::new().path(path)).unwrap()
}

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.sled");
    {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        sb.create_session(CreateSession::new("a")).await.unwrap();
    }
    {
        let db = raw(&path);
        let records = db.open_tree("records").unwrap();
        assert_eq!(
            records.get(b"F").unwrap().as_deref(),
            Some(&FORMAT_VERSION.to_be_bytes()[..])
        );
        records
            .insert(b"F", &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(&path) {
        Err(SledError::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

/// Data of format 1 (no version deltas) opens, keeps its sessions, and is marked as the
/// current format, so that format-1 code refuses it once it may hold deltas.
#[tokio::test]
async fn format_1_data_opens_and_is_marked_current() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sled");
    let id = {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        sb.replace_state(&s.id, StateWrite::new(json!({"v": 1})))
            .await
            .unwrap();
        s.id
    };
    let mark = |version: u64| {
        let db = raw(&path);
        let records = db.open_tree("records").unwrap();
        records.insert(b"F", &version.to_be_bytes()).unwrap();
        db.flush().unwrap();
    };
    mark(1);
    {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        assert_eq!(sb.state_at(&id, 1).await.unwrap().state["v"], 1);
    }
    let db = raw(&path);
    let records = db.open_tree("records").unwrap();
    assert_eq!(
        records.get(b"F").unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_be_bytes()[..])
    );
}

#[tokio::test]
async fn background_durability_keeps_writes_across_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("background.sled");
    let options = SledOptions {
        durability: Durability::Background,
    };
    let id = {
        let sb = StateBase::new(SledStore::open_with(&path, options.clone()).unwrap());
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        sb.replace_state(&s.id, StateWrite::new(json!({"n": 1})))
            .await
            .unwrap();
        s.id
    };
    let sb = StateBase::new(SledStore::open_with(&path, options).unwrap());
    assert_eq!(sb.get_session(&id).await.unwrap().version, 1);
}

/// Format 3 kept the server's records as strings in one key space: opened, they are moved to
/// their own keys (an endpoint, its owed and done deliveries, the cursor, an idempotent
/// response), the old keys are gone, and the data is marked as the current format.
#[tokio::test]
async fn format_3_server_records_move_to_their_own_keys() {
    use statebase_core::ServerRecords;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("format3.sled");
    drop(SledStore::open(&path).unwrap());
    let endpoint = r#"{"id":"wh_a","tenant":"t","url":"https://example.com/","events":[],"secret":"whsec_0123456789abcdef","created_at":"2026-01-02T03:04:05Z"}"#;
    let owed =
        r#"{"status":"pending","delivered_at":null,"next_attempt_at":"2026-01-02T00:00:00Z"}"#;
    let done =
        r#"{"status":"failed","delivered_at":null,"next_attempt_at":"2026-01-03T00:00:00Z"}"#;
    let response =
        r#"{"request":"r","status":201,"headers":[],"body":"{}","at":"2026-01-04T00:00:00Z"}"#;
    {
        let db = raw(&path);
        let records = db.open_tree("records").unwrap();
        let old_key = |space: &str, key: &str| {
            let mut k = vec![b'Q'];
            k.extend_from_slice(&(space.len() as u32).to_be_bytes());
            k.extend_from_slice(space.as_bytes());
            k.extend_from_slice(key.as_bytes());
            k
        };
        for (space, key, value) in [
            ("webhooks", "endpoint/1:t/wh_a".to_owned(), endpoint),
            ("webhooks", format!("pending/wh_a/{:020}", 12), owed),
            ("webhooks", format!("done/wh_a/{:020}", 7), done),
            ("webhooks", "cursor".to_owned(), "12"),
            ("idempotency", "key_1/k".to_owned(), response),
        ] {
            records
                .insert(old_key(space, &key), value.as_bytes())
                .unwrap();
        }
        records.insert(b"F", &3u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    {
        let store = SledStore::open(&path).unwrap();
        let e = store.webhook("t", "wh_a").await.unwrap().unwrap();
        assert_eq!(e.url, "https://example.com/");
        let deliveries = store.deliveries(None, false).await.unwrap();
        let found: Vec<(u64, Option<String>, &[u8])> = deliveries
            .iter()
            .map(|d| {
                (
                    d.position,
                    d.done_at.map(|t| t.to_rfc3339()),
                    d.body.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (7, Some("2026-01-03T00:00:00+00:00".into()), done.as_bytes()),
                (12, None, owed.as_bytes())
            ]
        );
        assert_eq!(store.delivery_cursor().await.unwrap(), 12);
        let kept = store.idempotent_response("key_1/k").await.unwrap().unwrap();
        assert_eq!(kept.body, response.as_bytes());
        assert_eq!(kept.at.to_rfc3339(), "2026-01-04T00:00:00+00:00");
    }
    let db = raw(&path);
    let records = db.open_tree("records").unwrap();
    assert_eq!(
        records.scan_prefix([b'Q']).count(),
        0,
        "the old keys are gone"
    );
    assert_eq!(
        records.get(b"F").unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_be_bytes()[..])
    );
}

/// Deleting an endpoint removes it, then its deliveries: a process killed between the two
/// leaves deliveries of an endpoint that is gone. They are not listed, and pruning removes
/// them.
#[tokio::test]
async fn deliveries_a_crash_left_behind_are_not_listed_and_are_pruned() {
    use statebase_core::store::DeliveryRecord;
    use statebase_core::{ServerRecords, WebhookEndpoint};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orphans.sled");
    {
        let store = SledStore::open(&path).unwrap();
        let endpoint = WebhookEndpoint {
            id: "wh_kept".into(),
            tenant: "t".into(),
            url: "https://example.com/".into(),
            events: vec![],
            secret: "whsec_0123456789abcdef".into(),
            created_at: statebase_core::Timestamp::UNIX_EPOCH,
        };
        store.put_webhook(endpoint).await.unwrap();
        let owed = DeliveryRecord {
            endpoint_id: "wh_kept".into(),
            position: 1,
            done_at: None,
            body: b"{}".to_vec(),
        };
        store.put_deliveries(vec![owed], None).await.unwrap();
    }
    {
        // What the crash left: an owed delivery (format 4: `L` str(endpoint) u64(position)
        // -> 0, body) of an endpoint that is gone.
        let db = raw(&path);
        let records = db.open_tree("records").unwrap();
        let mut key = vec![b'L'];
        key.extend_from_slice(&7u32.to_be_bytes());
        key.extend_from_slice(b"wh_gone");
        key.extend_from_slice(&3u64.to_be_bytes());
        records.insert(key, &b"\x00{}"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    let listed: Vec<String> = store
        .deliveries(None, true)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.endpoint_id)
        .collect();
    assert_eq!(listed, ["wh_kept"]);
    let far_past = statebase_core::Timestamp::UNIX_EPOCH;
    assert_eq!(
        store.prune_deliveries(far_past).await.unwrap(),
        1,
        "the orphan"
    );
    drop(store);
    let db = raw(&path);
    let records = db.open_tree("records").unwrap();
    assert_eq!(records.scan_prefix([b'L']).count(), 1, "only the kept one");
}
