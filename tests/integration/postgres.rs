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
