//! What the ACME process tells the master, one JSON object per line on a
//! pipe: the master owns the statistics region and the workers, so it puts a
//! stored certificate into service and records each certificate's state.

use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// A new certificate for these names is in the storage: the master
    /// loads it and starts workers with it, as a reload does.
    Stored { names: Vec<String> },
    /// Where the certificate whose first name is `name` stands.
    Status {
        name: String,
        /// When the next order is due, in seconds since the epoch.
        next_attempt_unix: i64,
        /// Orders failed since the last success.
        failures: u64,
        /// The last failure, while failures is not zero.
        last_error: Option<String>,
    },
}

impl Report {
    /// Writes the report as one line. A pipe write of up to PIPE_BUF bytes is
    /// atomic, so the error text is cut to keep the line under it.
    pub fn send(&self, pipe: &mut impl Write) -> std::io::Result<()> {
        let mut report = self.clone();
        if let Report::Status { last_error: Some(e), .. } = &mut report {
            *e = e.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            if e.len() > 1024 {
                let mut cut = 1024;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
        }
        let mut line = serde_json::to_vec(&report).map_err(std::io::Error::other)?;
        line.push(b'\n');
        pipe.write_all(&line)
    }
}

/// Splits what the master read from the pipe into reports, keeping a
/// partial last line for the next read. A line that is not a report is
/// skipped (and returned as an error text for the log).
pub fn take_reports(buffer: &mut Vec<u8>) -> Vec<Result<Report, String>> {
    let mut reports = Vec::new();
    while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buffer.drain(..=end).collect();
        reports.push(
            serde_json::from_slice(&line[..end])
                .map_err(|e| format!("unreadable report from the ACME process: {e}")),
        );
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_cross_the_pipe_whole() {
        let mut pipe = Vec::new();
        Report::Stored { names: vec!["a.test".into()] }.send(&mut pipe).unwrap();
        let status = Report::Status {
            name: "a.test".into(),
            next_attempt_unix: 7,
            failures: 2,
            last_error: Some("é".repeat(1000)),
        };
        status.send(&mut pipe).unwrap();
        let (first, rest) = pipe.split_at(10);
        let mut buffer = first.to_vec();
        assert!(take_reports(&mut buffer).is_empty());
        buffer.extend_from_slice(rest);
        buffer.extend_from_slice(b"garbage\n");
        let reports = take_reports(&mut buffer);
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0], Ok(Report::Stored { names: vec!["a.test".into()] }));
        assert!(matches!(&reports[1], Ok(Report::Status { last_error: Some(e), .. }) if e.len() <= 1024));
        assert!(reports[2].is_err());
        assert!(buffer.is_empty());
    }
}
