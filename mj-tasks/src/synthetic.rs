//! Realistic synthetic tasks, for demos, load tests and benchmarks.
//!
//! Deterministic for a given seed (a SplitMix64 stream; no `rand` dependency), fast enough to
//! generate millions of rows, and shaped like real traffic: submit times rising with the id,
//! mostly finished tasks with upstream-style image URLs, buttons and properties, a few failures
//! and a small share of unfinished tasks. The unfinished ones are spread over the whole period
//! rather than kept to the last hour, where a live poller would hold them: the pessimistic case
//! for anything that reads them, as each is a cold row of its own.

use crate::model::{NewTask, Progress, TaskAction, TaskStatus};

/// How synthetic tasks are spread over owners, channels and time.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Number of tasks the whole data set will have (spreads submit times evenly).
    pub total: u64,
    /// This user owns `heavy_share_percent` % of the tasks.
    pub heavy_user: i64,
    /// Share of tasks owned by `heavy_user`, 0..=100.
    pub heavy_share_percent: u8,
    /// The ids of the users who share the other tasks evenly (empty = every task is the heavy
    /// user's). Each task picks its owner on its own, so the owners interleave over time as the
    /// traffic of many users does.
    pub light_users: Vec<i64>,
    /// Channels `1..=channels` get tasks round-robin-ish.
    pub channels: u32,
    /// Submit time of the first task (ms).
    pub start_ms: i64,
    /// Submit time of the last task (ms).
    pub end_ms: i64,
    /// Share of tasks left unfinished, in thousandths (5 = 0.5 %).
    pub unfinished_per_mille: u16,
    /// Seed of the pseudo-random stream.
    pub seed: u64,
}

impl SyntheticSpec {
    /// `total` tasks for one user over the 90 days before now, on `channels` channels.
    pub fn single_user(user_id: i64, total: u64, channels: u32) -> Self {
        let end_ms = crate::model::now_millis();
        Self {
            total,
            heavy_user: user_id,
            heavy_share_percent: 100,
            light_users: Vec::new(),
            channels: channels.max(1),
            start_ms: end_ms - 90 * 86_400_000,
            end_ms,
            unfinished_per_mille: 5,
            seed: 0x006d_6a74_6173_6b73,
        }
    }

    /// The task at position `index` (0-based) of the data set.
    pub fn task(&self, index: u64) -> NewTask {
        let mut rng = SplitMix(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let span = (self.end_ms - self.start_ms).max(1) as u64;
        let step = span / self.total.max(1);
        let submit_time =
            self.start_ms + (index.saturating_mul(step) + rng.below(step.max(1))).min(span) as i64;
        let user_id = if self.light_users.is_empty()
            || rng.below(100) < u64::from(self.heavy_share_percent)
        {
            self.heavy_user
        } else {
            self.light_users[rng.below(self.light_users.len() as u64) as usize]
        };
        let channel_id = 1 + rng.below(u64::from(self.channels.max(1))) as i64;
        let action = match rng.below(100) {
            0..=59 => TaskAction::Imagine,
            60..=79 => TaskAction::Upscale,
            80..=89 => TaskAction::Variation,
            90..=94 => TaskAction::Describe,
            95..=97 => TaskAction::Blend,
            _ => TaskAction::Zoom,
        };
        let mj_id = format!("{}{:03}", submit_time, rng.below(1000));
        let prompt = prompt(&mut rng);
        let roll = rng.below(1000);
        let (status, progress) = if roll < u64::from(self.unfinished_per_mille) {
            let status = match rng.below(3) {
                0 => TaskStatus::NotStart,
                1 => TaskStatus::Submitted,
                _ => TaskStatus::InProgress,
            };
            (status, Progress::new(format!("{}%", rng.below(100))))
        } else if roll < 60 {
            (TaskStatus::Failure, Progress::complete())
        } else {
            (TaskStatus::Success, Progress::complete())
        };
        let started = status != TaskStatus::NotStart;
        let start_time = if started {
            submit_time + 1_000 + rng.below(9_000) as i64
        } else {
            0
        };
        let finish_time = if status.is_finished() {
            start_time + 30_000 + rng.below(60_000) as i64
        } else {
            0
        };
        let success = status == TaskStatus::Success;
        NewTask {
            code: 1,
            user_id,
            action: action.clone(),
            prompt_en: prompt.clone(),
            description: format!("/{} {}", action.as_str().to_ascii_lowercase(), mj_id),
            state: String::new(),
            submit_time,
            start_time,
            finish_time,
            image_url: if success {
                format!(
                    "https://cdn.discordapp.com/attachments/11{channel_id:08}/{mj_id}/grid_0_{}.png",
                    rng.next() % 1_000_000
                )
            } else {
                String::new()
            },
            video_url: String::new(),
            video_urls: String::new(),
            status,
            progress,
            fail_reason: if roll >= u64::from(self.unfinished_per_mille) && roll < 60 {
                "Banned prompt detected".to_owned()
            } else {
                String::new()
            },
            channel_id,
            quota: [2_500, 5_000, 10_000][rng.below(3) as usize],
            buttons: if success {
                BUTTONS.to_owned()
            } else {
                "[]".to_owned()
            },
            properties: format!("{{\"finalPrompt\":\"{prompt}\",\"finalZhPrompt\":\"\"}}"),
            prompt,
            mj_id,
        }
    }
}

const BUTTONS: &str = r#"[{"customId":"MJ::JOB::upsample::1::5f2c","emoji":"","label":"U1","type":2,"style":2},{"customId":"MJ::JOB::upsample::2::5f2c","emoji":"","label":"U2","type":2,"style":2},{"customId":"MJ::JOB::upsample::3::5f2c","emoji":"","label":"U3","type":2,"style":2},{"customId":"MJ::JOB::upsample::4::5f2c","emoji":"","label":"U4","type":2,"style":2},{"customId":"MJ::JOB::reroll::0::5f2c::SOLO","emoji":"🔄","label":"","type":2,"style":2},{"customId":"MJ::JOB::variation::1::5f2c","emoji":"","label":"V1","type":2,"style":2},{"customId":"MJ::JOB::variation::2::5f2c","emoji":"","label":"V2","type":2,"style":2},{"customId":"MJ::JOB::variation::3::5f2c","emoji":"","label":"V3","type":2,"style":2},{"customId":"MJ::JOB::variation::4::5f2c","emoji":"","label":"V4","type":2,"style":2}]"#;

const SUBJECTS: [&str; 12] = [
    "a red fox",
    "an astronaut cat",
    "a lighthouse",
    "a cyberpunk street",
    "a bonsai tree",
    "a dragon made of glass",
    "a cozy library",
    "a mountain lake",
    "a steam locomotive",
    "a koi pond",
    "a desert caravan",
    "a jellyfish city",
];
const STYLES: [&str; 10] = [
    "watercolor",
    "studio lighting",
    "isometric",
    "ukiyo-e",
    "cinematic",
    "oil painting",
    "pixel art",
    "golden hour",
    "low poly",
    "film grain",
];
const PARAMS: [&str; 6] = [
    "--ar 16:9",
    "--ar 1:1",
    "--v 6",
    "--niji 6",
    "--stylize 250",
    "--q 2",
];

fn prompt(rng: &mut SplitMix) -> String {
    format!(
        "{}, {}, {}, highly detailed {}",
        SUBJECTS[rng.below(SUBJECTS.len() as u64) as usize],
        STYLES[rng.below(STYLES.len() as u64) as usize],
        STYLES[rng.below(STYLES.len() as u64) as usize],
        PARAMS[rng.below(PARAMS.len() as u64) as usize],
    )
}

/// SplitMix64: tiny, fast and good enough for test data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let spec = SyntheticSpec {
            heavy_share_percent: 20,
            light_users: (100..200).collect(),
            ..SyntheticSpec::single_user(1, 10_000, 8)
        };
        assert_eq!(spec.task(42), spec.task(42));
        let tasks: Vec<_> = (0..10_000).map(|i| spec.task(i)).collect();
        let heavy = tasks.iter().filter(|t| t.user_id == 1).count();
        assert!((1_500..2_500).contains(&heavy), "{heavy}");
        assert!(tasks.iter().all(|t| (1..=8).contains(&t.channel_id)));
        assert!(
            tasks
                .windows(2)
                .all(|w| w[0].submit_time <= w[1].submit_time + 90 * 86_400_000 / 10_000)
        );
        let unfinished = tasks.iter().filter(|t| !t.status.is_finished()).count();
        assert!((10..120).contains(&unfinished), "{unfinished}");
        assert!(
            tasks
                .iter()
                .all(|t| serde_json::from_str::<serde_json::Value>(&t.properties).is_ok())
        );
    }
}
