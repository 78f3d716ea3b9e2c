//! Several neroman processes at once on one project: the state store is created and migrated
//! safely whoever comes first.

mod common;
use common::{Project, V};

/// Regression: `neroman start 1-15 & neroman start 5-20` on a fresh project failed 8 times in 10
/// with `database is locked` or `table experiments already exists` (both processes created the
/// store and ran its first migration).
#[test]
fn concurrent_commands_on_a_fresh_project_all_succeed() {
    const PROCESSES: usize = 6;
    for round in 0..20 {
        let p = Project::new(&format!("race{round}"), "command: echo loss={x}\n");
        p.workbook(
            &["id", "status", "x"],
            &[
                vec![V::N(1.0), V::E, V::N(0.5)],
                vec![V::N(2.0), V::E, V::N(0.7)],
            ],
        );
        let barrier = std::sync::Barrier::new(PROCESSES);
        let outputs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PROCESSES)
                .map(|_| {
                    let (p, barrier) = (&p, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        p.neroman(&["status", "--json"])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in &outputs {
            assert!(
                out.status.success(),
                "round {round}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(rows.as_array().unwrap().len(), 2, "round {round}");
        }
        let store = neronet::store::Store::open(&p.path(".neronet/state.db")).unwrap();
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, neronet::store::SCHEMA_VERSION, "round {round}");
        assert_eq!(store.experiments().unwrap().len(), 2, "round {round}");
    }
}
