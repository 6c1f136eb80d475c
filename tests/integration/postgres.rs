//! The database of the local stack is reachable with the configured URL.

use crate::helpers::database_url;
use sqlx::Connection;

#[tokio::test]
async fn the_configured_database_answers_queries() {
    let url = database_url();
    let mut connection = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("postgres at {url} is reachable: {e}"));
    let (database, one): (String, i32) = sqlx::query_as("SELECT current_database(), 1")
        .fetch_one(&mut connection)
        .await
        .expect("a query runs");
    assert_eq!(one, 1);
    assert!(
        url.ends_with(&format!("/{database}")),
        "connected to the database the URL names ({database} in {url})"
    );
}

/// A checkpoint of an empty state with the given chain flag, generation and newest event
/// time (its position names the generation): what the pruning tests write.
fn empty_frozen_at(
    layout: &storepulse::aggregate::Layout,
    full: bool,
    generation: u64,
    newest_event_time: i64,
) -> storepulse::checkpoint::Frozen {
    use storepulse::aggregate::{AggregateConfig, State};
    let state = State::new(std::sync::Arc::new(AggregateConfig::default()));
    let mut frozen = storepulse::checkpoint::Frozen::whole(&state, layout);
    frozen.full = full;
    frozen.generation = generation;
    frozen.position = format!("test:{generation}");
    frozen.newest_event_time = newest_event_time;
    frozen
}

/// `checkpoint.keep` newest plus the newest of each of the last `keep_hourly` hours of event
/// time survive a write; everything else of the group is deleted in its transaction.
#[tokio::test]
async fn a_write_keeps_the_newest_and_the_newest_of_each_recent_hour() {
    use std::sync::Arc;
    use storepulse::aggregate::Layout;
    use storepulse::checkpoint::{CheckpointStore, Keep};
    use storepulse::events::TopicRole;
    let group = crate::helpers::unique("keep-hourly");
    let store = CheckpointStore::connect_lazy(&database_url(), &group).expect("a URL");
    store.migrate().await.expect("migrations apply");
    let layout = Layout::new(vec![(TopicRole::Orders, "orders".to_owned(), 1)]);
    const HOUR: i64 = 3_600_000;
    let base = 1_800_000_000_000 / HOUR * HOUR;
    let minutes = |m: i64| base + m * 60_000;
    // Hours 0, 1, 2 and 3 after `base`, written in time order like serve does.
    let times = [
        minutes(0),
        minutes(10),
        minutes(60),
        minutes(90),
        minutes(120),
        minutes(180),
        minutes(181),
    ];
    let keep = Keep {
        newest: 2,
        hourly: 3,
    };
    let mut chain = None;
    for (offset, time) in times.iter().enumerate() {
        let frozen = empty_frozen_at(&layout, chain.is_none(), offset as u64, *time);
        let written = store
            .write(Arc::new(frozen), &layout, keep, chain)
            .await
            .expect("written");
        chain = Some(written.base_id);
    }
    let mut connection = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("postgres answers");
    let kept: Vec<(i64,)> = sqlx::query_as(
        "SELECT newest_event_time FROM checkpoints WHERE group_name = $1 ORDER BY id",
    )
    .bind(&group)
    .fetch_all(&mut connection)
    .await
    .expect("a query runs");
    let kept: Vec<i64> = kept.into_iter().map(|(t,)| t).collect();
    // Newest two (3:00, 3:01); newest of hours 3, 2 and 1 (3:01, 2:00, 1:30); hour 0 is gone.
    assert_eq!(
        kept,
        vec![minutes(90), minutes(120), minutes(180), minutes(181)]
    );
    // With no hourly checkpoints only the newest stay.
    let frozen = empty_frozen_at(&layout, false, 7, minutes(182));
    let newest_only = Keep {
        newest: 2,
        hourly: 0,
    };
    store
        .write(Arc::new(frozen), &layout, newest_only, chain)
        .await
        .expect("written");
    let count: (i64,) = sqlx::query_as("SELECT count(*) FROM checkpoints WHERE group_name = $1")
        .bind(&group)
        .fetch_one(&mut connection)
        .await
        .expect("a query runs");
    assert_eq!(count.0, 2);
}

/// Checkpoints in parts: a process's first writes every store, later ones only the stores
/// that changed (fewer bytes); the newest restores exactly the state, from the newest part
/// of each store; parts no kept checkpoint reads are deleted; another process's chain never
/// mixes in.
#[tokio::test]
async fn a_checkpoint_writes_the_changed_stores_and_restores_from_the_newest_parts() {
    use std::sync::Arc;
    use storepulse::aggregate::{AggregateConfig, Changes, Layout, PartitionKey, RecordRef, State};
    use storepulse::checkpoint::{CheckpointStore, Frozen, Keep};
    use storepulse::events::{Event, TopicRole, samples};
    let group = crate::helpers::unique("parts");
    let store = CheckpointStore::connect_lazy(&database_url(), &group).expect("a URL");
    store.migrate().await.expect("migrations apply");
    let layout = Layout::new(vec![
        (TopicRole::Orders, "orders".to_owned(), 1),
        (TopicRole::Inventory, "inventory".to_owned(), 1),
        (TopicRole::Activity, "activity".to_owned(), 1),
    ]);
    let config = Arc::new(AggregateConfig::default());
    let mut state = State::new(Arc::clone(&config));
    let mut offset = 0;
    let mut order = |state: &mut State, store: &str| -> Changes {
        let mut placed = samples::order_placed();
        placed.store_id = store.into();
        placed.event_id = format!("e{offset}");
        placed.order_id = format!("o{offset}").into();
        placed.occurred_at += offset;
        let mut changes = Changes::default();
        state.apply(
            &Event::OrderPlaced(placed),
            RecordRef {
                partition: PartitionKey {
                    role: TopicRole::Orders,
                    partition: 0,
                },
                offset,
            },
            &mut changes,
        );
        offset += 1;
        changes
    };
    for id in ["a", "b", "c"] {
        order(&mut state, id);
    }
    let keep = Keep {
        newest: 2,
        hourly: 0,
    };
    let whole = Arc::new(Frozen::whole(&state, &layout));
    let first = store
        .write(whole, &layout, keep, None)
        .await
        .expect("written");
    assert_eq!((first.stores, first.base_id), (3, first.id));
    let mut sizes = Vec::new();
    let mut ids = vec![first.id];
    for (generation, id) in [(1, "a"), (2, "b"), (3, "a")] {
        let changes = order(&mut state, id);
        let frozen = Frozen::of(&state, &layout, changes.stores.keys(), false, generation);
        let written = store
            .write(Arc::new(frozen), &layout, keep, Some(first.base_id))
            .await
            .expect("written");
        assert_eq!((written.stores, written.base_id), (1, first.base_id));
        sizes.push(written.bytes);
        ids.push(written.id);
    }
    assert!(
        sizes.iter().all(|b| *b < first.bytes),
        "{sizes:?} < {}",
        first.bytes
    );
    let (_, restored) = store
        .load_newest(&layout, Arc::clone(&config))
        .await
        .expect("loads")
        .expect("a checkpoint");
    assert!(restored == state, "the newest parts restore the state");
    let mut connection = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("postgres answers");
    // Kept: the last two checkpoints (ids[2] and ids[3]). They read a at ids[1] and ids[3],
    // b at ids[2], c at ids[0]: a's and b's first parts are gone.
    let parts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT store_id, version FROM checkpoint_stores WHERE group_name = $1 ORDER BY store_id, version",
    )
    .bind(&group)
    .fetch_all(&mut connection)
    .await
    .expect("a query runs");
    assert_eq!(
        parts,
        vec![
            ("a".to_owned(), ids[1]),
            ("a".to_owned(), ids[3]),
            ("b".to_owned(), ids[2]),
            ("c".to_owned(), ids[0]),
        ]
    );
    // A second process of the group starts its own chain with a whole checkpoint; the first
    // chain's parts go when none of its checkpoints is kept.
    let other = store
        .write(
            Arc::new(Frozen::whole(&state, &layout)),
            &layout,
            keep,
            None,
        )
        .await
        .expect("written");
    assert_ne!(other.base_id, first.base_id);
    let again = store
        .write(
            Arc::new(Frozen::of(&state, &layout, std::iter::empty(), false, 9)),
            &layout,
            keep,
            Some(other.base_id),
        )
        .await
        .expect("written");
    assert_eq!(again.stores, 0);
    let (id, restored) = store
        .load_newest(&layout, config)
        .await
        .expect("loads")
        .expect("a checkpoint");
    assert_eq!(id, again.id);
    assert!(restored == state);
    let chains: Vec<(i64,)> =
        sqlx::query_as("SELECT DISTINCT base_id FROM checkpoint_stores WHERE group_name = $1")
            .bind(&group)
            .fetch_all(&mut connection)
            .await
            .expect("a query runs");
    assert_eq!(chains, vec![(other.base_id,)], "the first chain is pruned");
}

/// A checkpoint store that answers but refuses every write (here its table is gone; in
/// the report, a row over PostgreSQL's 1 GB limit): `/readyz` turns not ready after three
/// failures in a row and says why, and ready again once a write succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_that_keep_failing_turn_readiness_off_until_one_is_written() {
    use crate::helpers::{Server, create_topics, fresh_topics, produce_timed, wait_for};
    use storepulse::events::{Codec, Event, SessionSeen};
    let database = crate::helpers::unique("ckpt").replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("a database of its own");
    let url = format!(
        "{}/{database}",
        database_url()
            .rsplit_once('/')
            .expect("a URL with a database")
            .0
    );
    let settings = fresh_topics("ckpt-fail");
    create_topics(&settings, 1).await;
    let server = Server::start(&settings.topics, &crate::helpers::unique("ckpt"), &url);
    let codec = Codec::new(&Default::default()).expect("schemas");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let mut offset = 0;
    let mut session = || {
        offset += 1;
        let event = Event::SessionSeen(SessionSeen {
            event_id: format!("ev-{offset}"),
            store_id: "store-berlin".into(),
            occurred_at: now_ms + offset,
            session_id: format!("sess-{offset}"),
            user_id: None,
        });
        let value = codec.encode(&event).expect("encodes");
        produce_timed(&[(
            settings.topics.activity.as_str(),
            format!("sess-{offset}"),
            value,
            now_ms + offset,
        )]);
    };
    session();
    wait_for(
        || server.metric("storepulse_checkpoints_total") >= 1 && server.get("/readyz").0 == 200,
        "a first checkpoint and readiness",
    )
    .await;
    let mut db = sqlx::PgConnection::connect(&url)
        .await
        .expect("its database");
    sqlx::query("ALTER TABLE checkpoint_positions RENAME TO checkpoint_positions_away")
        .execute(&mut db)
        .await
        .expect("renamed");
    session();
    wait_for(
        || {
            let (status, body) = server.get("/readyz");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            status == 503
                && body["checkpoint_store"]["reachable"] == true
                && body["checkpoint_store"]["consecutive_failures"].as_i64() >= Some(3)
        },
        "/readyz to say the checkpoints keep failing",
    )
    .await;
    sqlx::query("ALTER TABLE checkpoint_positions_away RENAME TO checkpoint_positions")
        .execute(&mut db)
        .await
        .expect("renamed back");
    wait_for(
        || server.get("/readyz").0 == 200,
        "readiness once a checkpoint is written",
    )
    .await;
    assert_eq!(
        server.metric("storepulse_checkpoint_consecutive_failures"),
        0
    );
    assert!(server.terminate(), "SIGTERM exits 0");
    drop(db);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("dropped");
}
