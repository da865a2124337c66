//! The task as midjourney-proxy's clients read it (`GET /mj/task/{id}/fetch`,
//! `POST /mj/task/list-by-condition`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::image::ImagePresenter;
use crate::model::Task;

/// midjourney-proxy's camelCase `Task`, served from our database. Unknown or unset values are
/// `null` (never left out), times are epoch ms, and `buttons` / `properties` are JSON values
/// (not text, unlike the dashboard's views).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayTask {
    /// The upstream task id.
    pub id: String,
    /// The action.
    pub action: String,
    /// The status.
    pub status: String,
    /// The prompt.
    pub prompt: String,
    /// The effective prompt.
    pub prompt_en: String,
    /// The description.
    pub description: String,
    /// The caller's state, `null` when empty.
    pub state: Option<String>,
    /// Our submit time (ms).
    pub submit_time: Option<i64>,
    /// Start time (ms), `null` when not started.
    pub start_time: Option<i64>,
    /// Finish time (ms), `null` when not finished.
    pub finish_time: Option<i64>,
    /// The image address as the presenter shows it, `null` when there is none.
    pub image_url: Option<String>,
    /// The video address, `null` when there is none.
    pub video_url: Option<String>,
    /// Progress text.
    pub progress: String,
    /// Why it failed, `null` unless it did.
    pub fail_reason: Option<String>,
    /// The action buttons (plus), `[]` when there are none.
    pub buttons: Value,
    /// Extra properties, `{}` when there are none.
    pub properties: Value,
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn time(millis: i64) -> Option<i64> {
    (millis > 0).then_some(millis)
}

fn json_text(text: &str, fallback: Value) -> Value {
    serde_json::from_str(text).unwrap_or(fallback)
}

impl RelayTask {
    /// `task` as clients see it, its image address decided by `presenter` (raw, or forwarded
    /// and signed): the one place that decides what clients see as the image stays outside.
    pub fn new(task: &Task, presenter: &dyn ImagePresenter) -> Self {
        Self {
            id: task.mj_id.clone(),
            action: task.action.as_str().to_owned(),
            status: task.status.as_str().to_owned(),
            prompt: task.prompt.clone(),
            prompt_en: task.prompt_en.clone(),
            description: task.description.clone(),
            state: non_empty(&task.state),
            submit_time: time(task.submit_time),
            start_time: time(task.start_time),
            finish_time: time(task.finish_time),
            image_url: non_empty(&presenter.present(task)),
            video_url: non_empty(&task.video_url),
            progress: task.progress.as_str().to_owned(),
            fail_reason: non_empty(&task.fail_reason),
            buttons: json_text(&task.buttons, json!([])),
            properties: json_text(&task.properties, json!({})),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::image::StoredImageUrl;
    use crate::{NewTask, TaskAction};

    struct Forwarded;

    impl ImagePresenter for Forwarded {
        fn present(&self, task: &Task) -> String {
            format!("https://gw/mj/image/{}", task.mj_id)
        }
    }

    fn task() -> Task {
        let fields = NewTask {
            image_url: "https://cdn/raw.png".into(),
            buttons: "not json".into(),
            ..NewTask::submitted(1, TaskAction::Imagine, "fox", "1715240000123456", 2)
        };
        Task {
            id: 7,
            version: 0,
            fields,
        }
    }

    #[test]
    fn camel_case_with_nulls_and_the_presenters_image() {
        let value = serde_json::to_value(RelayTask::new(&task(), &Forwarded)).unwrap();
        assert_eq!(value["id"], "1715240000123456");
        assert_eq!(value["imageUrl"], "https://gw/mj/image/1715240000123456");
        assert_eq!(value["state"], Value::Null);
        assert_eq!(value["startTime"], Value::Null);
        assert_eq!(value["failReason"], Value::Null);
        assert_eq!(value["buttons"], json!([]), "unreadable text falls back");
        assert_eq!(value["properties"], json!({}));
        assert!(value["submitTime"].as_i64().unwrap() > 0);
        let raw = RelayTask::new(&task(), &StoredImageUrl);
        assert_eq!(raw.image_url.as_deref(), Some("https://cdn/raw.png"));
        let back: RelayTask = serde_json::from_value(value).unwrap();
        assert_eq!(back.prompt, "fox");
    }
}
