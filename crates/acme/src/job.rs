//! What the master hands the ACME process, in its environment: the `[acme]`
//! table and the certificates of the configuration the master runs (not the
//! file on disk, which may have changed since), and the descriptors it
//! inherits.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tine_config::{AcmeChallenge, Config};

/// The environment variable that carries the job, as JSON.
pub const JOB_ENV: &str = "TINE_ACME_JOB";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub directory: String,
    pub email: Option<String>,
    pub storage: PathBuf,
    /// `http-01` or `tls-alpn-01`.
    pub challenge: String,
    pub renew_before_secs: u64,
    pub ca: Option<PathBuf>,
    pub retry_secs: u64,
    /// Each certificate's names, the first naming its storage.
    pub certificates: Vec<Vec<String>>,
    /// Where the ACME process logs: the master's error log, or stderr.
    pub error_log: Option<PathBuf>,
    /// The challenge board (a memfd).
    pub board_fd: i32,
    /// The write end of the pipe the master reads reports from.
    pub report_fd: i32,
}

impl Job {
    /// The job for `config`; None when no certificate is obtained by ACME.
    pub fn for_config(config: &Config, board_fd: i32, report_fd: i32) -> Option<Job> {
        let acme = config.acme.as_ref()?;
        let certificates: Vec<Vec<String>> =
            config.certificates.iter().filter_map(|c| c.acme_names()).map(<[String]>::to_vec).collect();
        if certificates.is_empty() {
            return None;
        }
        Some(Job {
            directory: acme.directory.clone(),
            email: acme.email.clone(),
            storage: acme.storage.clone(),
            challenge: acme.challenge.name().to_string(),
            renew_before_secs: acme.renew_before.as_secs(),
            ca: acme.ca.clone(),
            retry_secs: acme.retry.as_secs(),
            certificates,
            error_log: config.error_log.clone(),
            board_fd,
            report_fd,
        })
    }

    /// True when `other` asks for the same work (descriptors aside): a
    /// reload that changes none of it leaves the ACME process running.
    pub fn same_work(&self, other: &Job) -> bool {
        Job { board_fd: 0, report_fd: 0, ..self.clone() }
            == Job { board_fd: 0, report_fd: 0, ..other.clone() }
    }

    pub fn challenge(&self) -> AcmeChallenge {
        AcmeChallenge::parse(&self.challenge).unwrap_or(AcmeChallenge::Http01)
    }

    pub fn renew_before(&self) -> Duration {
        Duration::from_secs(self.renew_before_secs)
    }

    pub fn retry(&self) -> Duration {
        Duration::from_secs(self.retry_secs.max(1))
    }

    pub fn to_env(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_env() -> Result<Job, String> {
        let text = std::env::var(JOB_ENV)
            .map_err(|_| format!("{JOB_ENV} is not set: the master starts this process"))?;
        serde_json::from_str(&text).map_err(|e| format!("{JOB_ENV}: {e}"))
    }
}
