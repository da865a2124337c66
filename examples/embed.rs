//! Embedding mj-tasks the way a gateway would: open a store, record submitted tasks, update one
//! as a poller would, and serve a user's page with the same rules as `GET /api/mj/self`.
//!
//! Run: `cargo run --example embed` (in-memory SQLite), or pass a database URL:
//! `cargo run --example embed -- postgres://postgres@127.0.0.1/test`.

use mj_tasks::{Audience, NewTask, Progress, TaskAction, TaskStatus, parse_list_query};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite::memory:".to_owned());
    let store = mj_tasks::connect(&url).await?;
    let tasks = store.tasks();

    // A gateway records each task it forwards to an upstream channel.
    let user_id = 42;
    for (n, prompt) in [
        "a red fox in snow",
        "a lighthouse at dusk",
        "a koi pond, ukiyo-e",
    ]
    .iter()
    .enumerate()
    {
        let mj_id = format!("17152400001234{n:02}");
        tasks
            .insert(&NewTask::submitted(
                user_id,
                TaskAction::Imagine,
                *prompt,
                mj_id,
                1,
            ))
            .await?;
    }

    // Its poller walks unfinished tasks in bounded batches and writes changes with
    // compare-and-swap, so a concurrent writer never loses an update.
    let batch = tasks.list_unfinished(0, 100).await?;
    if let Some(first) = batch.first() {
        let mut done = first.clone();
        done.status = TaskStatus::Success;
        done.progress = Progress::complete();
        done.image_url = "https://cdn.example.com/fox.png".to_owned();
        let won = tasks.update_if_version(&done).await?;
        println!("task {} finished (update applied: {won})", done.id);
    }

    // The dashboard list: raw query string in, page of the user's own tasks out.
    let (query, page) = parse_list_query("p=1&page_size=2", Audience::Owner(user_id))?;
    let page = tasks.list(&query, page).await?;
    println!(
        "{} tasks in all; page {} of size {}:",
        page.total, page.page, page.page_size
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&page.map_ref(|t| t.user_view()))?
    );

    store.close().await;
    Ok(())
}
