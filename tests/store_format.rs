//! Old state stores must keep opening: a store written by schema version 1 (checked in as a
//! fixture) is read by today's code, migrated forward if the schema has grown.

use neronet::state::StateName;
use neronet::store::Store;

#[test]
fn reads_a_version_1_store() {
    let dir = std::env::temp_dir().join(format!("neronet-store-v1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-v1.db"),
        &path,
    )
    .unwrap();
    let store = Store::open(&path).unwrap();
    let runs = store.latest_runs().unwrap();
    assert_eq!(runs.len(), 2);
    let one = &runs["1"];
    assert_eq!(one.state.name(), StateName::Finished);
    assert_eq!(one.exit_code, Some(0));
    assert_eq!(one.params["lr"], "0.1");
    assert!(one.started_at.unwrap() < one.finished_at.unwrap());
    let metrics = store.last_metrics().unwrap();
    assert_eq!(metrics["1.1"]["epoch"], 4.0);
    assert_eq!(store.metric_count("2.1").unwrap(), 10);
    let changes: Vec<String> = store
        .state_changes("1.1")
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(changes, ["submitted", "queued", "running", "finished"]);
    let _ = std::fs::remove_dir_all(&dir);
}
