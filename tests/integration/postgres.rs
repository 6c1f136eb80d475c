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

/// `checkpoint.keep` newest plus the newest of each of the last `keep_hourly` hours of event
/// time survive a write; everything else of the group is deleted in its transaction.
#[tokio::test]
async fn a_write_keeps_the_newest_and_the_newest_of_each_recent_hour() {
    use storepulse::aggregate::Layout;
    use storepulse::checkpoint::{CheckpointStore, Frozen, Keep};
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
    for (offset, time) in times.iter().enumerate() {
        let frozen = Frozen {
            bytes: vec![0; 8],
            position: format!("test:{offset}"),
            partitions: vec![("orders".to_owned(), 0, offset as i64)],
            newest_event_time: *time,
        };
        store.write(&frozen, &layout, keep).await.expect("written");
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
    let frozen = Frozen {
        bytes: vec![0; 8],
        position: "test:7".to_owned(),
        partitions: vec![("orders".to_owned(), 0, 7)],
        newest_event_time: minutes(182),
    };
    let newest_only = Keep {
        newest: 2,
        hourly: 0,
    };
    store
        .write(&frozen, &layout, newest_only)
        .await
        .expect("written");
    let count: (i64,) = sqlx::query_as("SELECT count(*) FROM checkpoints WHERE group_name = $1")
        .bind(&group)
        .fetch_one(&mut connection)
        .await
        .expect("a query runs");
    assert_eq!(count.0, 2);
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
