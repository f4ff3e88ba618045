//! The ACME process's life. It takes the storage lock (two masters share the
//! storage during a binary upgrade; one process orders at a time), then, for
//! ever: wait until the next certificate is due, order it, store it, tell
//! the master. A failed order leaves the stored certificate serving, is
//! logged as an error, and waits longer after each failure.
//!
//! It runs on a single-threaded tokio runtime, because the ACME client is
//! async; nothing else of tine runs here. SIGQUIT (sent by the kernel when
//! the master dies) and SIGTERM end it; SIGUSR1 reopens its log.

use crate::job::Job;
use crate::order::{self, OrderError};
use crate::report::Report;
use crate::schedule::{self, Stored};
use instant_acme::{Account, AccountCredentials, NewAccount};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tine_tls::acme_storage::{self, StoredCertificate};
use tine_tls::ChallengeBoard;
use tokio::signal::unix::{signal, SignalKind};

/// The longest an attempt may take, from the first request to the stored
/// chain (a CA that stops answering must not stall the process).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest sleep between two looks at the clock (a suspended host or a
/// clock that jumps is noticed within this).
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);
/// How often a process waiting for another's storage lock tries again.
const LOCK_RETRY: Duration = Duration::from_secs(2);

/// Runs the ACME process as `tine acme-process`: only returns on a setup
/// error, which the caller prints before exiting.
pub fn run() -> Result<(), String> {
    let job = Job::from_env()?;
    let target = job
        .error_log
        .clone()
        .map_or(tine_logging::ErrorLogTarget::Stderr, tine_logging::ErrorLogTarget::File);
    tine_logging::install(target).map_err(|e| format!("cannot open the error log: {e}"))?;
    tine_net::sys::set_process_name("tine: acme");
    tine_net::sys::quit_when_parent_dies();
    let board_fd = tine_net::sys::take_handed_fd(job.board_fd).ok_or("no challenge board was handed over")?;
    let board = ChallengeBoard::adopt(board_fd).map_err(|e| format!("challenge board: {e}"))?;
    let reports: OwnedFd =
        tine_net::sys::take_handed_fd(job.report_fd).ok_or("no report pipe was handed over")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the ACME runtime: {e}"))?;
    let mut process = Process::new(job, board, File::from(reports));
    runtime.block_on(process.run())
}

/// One certificate's place in the schedule.
struct Certificate {
    names: Vec<String>,
    stored: StoredCertificate,
    next_attempt: i64,
    failures: u64,
    last_error: Option<String>,
}

struct Process {
    job: Job,
    board: ChallengeBoard,
    reports: File,
    certificates: Vec<Certificate>,
    account: Option<Account>,
}

impl Process {
    fn new(job: Job, board: ChallengeBoard, reports: File) -> Self {
        let certificates = job
            .certificates
            .iter()
            .map(|names| Certificate {
                names: names.clone(),
                stored: StoredCertificate::for_names(&job.storage, names),
                next_attempt: 0,
                failures: 0,
                last_error: None,
            })
            .collect();
        Process { job, board, reports, certificates, account: None }
    }

    async fn run(&mut self) -> Result<(), String> {
        let mut quit = signal(SignalKind::quit()).map_err(|e| e.to_string())?;
        let mut reopen = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
        let (_lock, waited) = tokio::select! {
            lock = self.lock_storage() => lock?,
            _ = quit.recv() => return Ok(()),
        };
        // What a previous ACME process left on the board is stale.
        self.board.clear();
        if waited {
            // The other holder (the old master's, during an upgrade) may have
            // stored certificates since our master read them: have it read
            // them again.
            for i in 0..self.certificates.len() {
                if self.certificates[i].stored.exists() {
                    let report = Report::Stored { names: self.certificates[i].names.clone() };
                    self.send(&report);
                }
            }
        }
        let now = unix_now();
        for i in 0..self.certificates.len() {
            let c = &mut self.certificates[i];
            c.next_attempt =
                schedule::due(Stored::read(&c.stored.path).as_ref(), &c.names, self.job.renew_before(), now);
            if c.next_attempt > now {
                log::info!(
                    "ACME: the stored certificate for {} is renewed in {}",
                    c.names.join(", "),
                    tine_stats::render::span(c.next_attempt - now)
                );
            }
            self.report_status(i);
        }
        loop {
            let Some((i, at)) = self
                .certificates
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.next_attempt))
                .min_by_key(|&(_, at)| at)
            else {
                return Ok(());
            };
            let wait = Duration::from_secs(at.saturating_sub(unix_now()).max(0) as u64).min(LONGEST_SLEEP);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = quit.recv() => return Ok(()),
                    _ = reopen.recv() => {
                        if let Err(e) = tine_logging::reopen_error_log() {
                            log::error!("ACME: cannot reopen the error log: {e}");
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                _ = self.attempt(i) => {}
                _ = quit.recv() => return Ok(()),
            }
        }
    }

    /// Creates the storage (0700) and takes its lock, waiting while another
    /// tine holds it (then true).
    async fn lock_storage(&self) -> Result<(nix::fcntl::Flock<File>, bool), String> {
        let storage = &self.job.storage;
        acme_storage::create_private_dir(storage)
            .map_err(|e| format!("cannot create the ACME storage {}: {e}", storage.display()))?;
        if acme_storage::opened_to_others(storage) {
            log::warn!(
                "ACME: {} can be read by other users; it holds the account and certificate keys: chmod 700 it",
                storage.display()
            );
        }
        let path = acme_storage::lock_file(storage);
        let mut told = false;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok((lock, told)),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if !told {
                        log::info!("ACME: another tine holds {}; waiting for it", path.display());
                        told = true;
                    }
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
            }
        }
    }

    /// Orders certificate `i`, stores it and tells the master; or counts the
    /// failure and schedules the retry.
    async fn attempt(&mut self, i: usize) {
        let names = self.certificates[i].names.clone();
        log::info!("ACME: ordering a certificate for {} from {}", names.join(", "), self.job.directory);
        let outcome = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.order(&names)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Other(format!("no answer from the CA within {ATTEMPT_TIMEOUT:?}"))),
        };
        let now = unix_now();
        let c = &mut self.certificates[i];
        match outcome {
            Ok(stored) => {
                c.failures = 0;
                c.last_error = None;
                c.next_attempt = schedule::due(Some(&stored), &c.names, self.job.renew_before(), now);
                log::info!(
                    "ACME: certificate for {} stored in {}; valid for {}, renewed in {}",
                    c.names.join(", "),
                    c.stored.path.display(),
                    tine_stats::render::span(stored.not_after - now),
                    tine_stats::render::span(c.next_attempt - now)
                );
                let report = Report::Stored { names: c.names.clone() };
                self.send(&report);
            }
            Err(failure) => {
                c.failures += 1;
                let wait = match &failure {
                    Failure::RateLimited(_) => schedule::rate_limited_wait(c.failures, self.job.retry()),
                    _ => schedule::retry_wait(c.failures, self.job.retry()),
                };
                c.next_attempt = now + wait.as_secs() as i64;
                let text = failure.to_string();
                log::error!(
                    "ACME: order for {} failed ({} in a row): {text}; {}; next attempt in {}",
                    c.names.join(", "),
                    c.failures,
                    if c.stored.exists() {
                        "the current certificate keeps serving"
                    } else {
                        "a temporary self-signed certificate keeps serving"
                    },
                    tine_stats::render::span(wait.as_secs() as i64)
                );
                c.last_error = Some(text);
            }
        }
        self.report_status(i);
    }

    /// The order itself: the account, then the order, then the files. An
    /// account the CA no longer knows is registered again, once per attempt.
    async fn order(&mut self, names: &[String]) -> Result<Stored, Failure> {
        let mut registered_again = false;
        let issued = loop {
            let account = self.account().await?;
            match order::obtain(&account, names, self.job.challenge(), &self.board).await {
                Ok(issued) => break issued,
                Err(e) if e.account_is_gone() && !registered_again => {
                    log::warn!(
                        "ACME: the CA no longer knows the stored account ({e}); registering a new one"
                    );
                    self.account = None;
                    let _ = std::fs::remove_file(self.account_file());
                    registered_again = true;
                }
                Err(e) => return Err(Failure::from(e)),
            }
        };
        let stored = StoredCertificate::for_names(&self.job.storage, names);
        stored.write(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).map_err(|e| {
            Failure::Other(format!("cannot store the certificate in {}: {e}", stored.path.display()))
        })?;
        Stored::read(&stored.path).ok_or_else(|| {
            Failure::Other(format!("the CA's chain in {} cannot be read", stored.path.display()))
        })
    }

    fn account_file(&self) -> PathBuf {
        acme_storage::account_file(&self.job.storage, &self.job.directory)
    }

    /// The account: the one in memory, the stored one, or a new one
    /// (registered and stored).
    async fn account(&mut self) -> Result<Account, Failure> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let path = self.account_file();
        let stored = std::fs::read(&path).ok().and_then(|bytes| {
            match serde_json::from_slice::<AccountCredentials>(&bytes) {
                Ok(credentials) => Some(credentials),
                Err(e) => {
                    log::warn!("ACME: {} cannot be read ({e}); registering a new account", path.display());
                    None
                }
            }
        });
        let account = match stored {
            Some(credentials) => {
                let account =
                    self.builder()?.from_credentials(credentials).await.map_err(OrderError::from)?;
                log::info!("ACME: using the account stored in {}", path.display());
                account
            }
            None => {
                let contact = self.job.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = self
                    .builder()?
                    .create(&new, self.job.directory.clone(), None)
                    .await
                    .map_err(OrderError::from)?;
                let json = serde_json::to_vec(&credentials).map_err(|e| Failure::Other(e.to_string()))?;
                if let Some(dir) = path.parent() {
                    acme_storage::create_private_dir(dir)
                        .map_err(|e| Failure::Other(format!("{}: {e}", dir.display())))?;
                }
                acme_storage::write_private(&path, &json).map_err(|e| {
                    Failure::Other(format!("cannot store the account in {}: {e}", path.display()))
                })?;
                log::info!(
                    "ACME: registered account {} with {}, stored in {}",
                    account.id(),
                    self.job.directory,
                    path.display()
                );
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, Failure> {
        match &self.job.ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| Failure::Other(format!("ca {}: {e}", ca.display()))),
            None => Account::builder().map_err(|e| Failure::Other(format!("the system's trust store: {e}"))),
        }
    }

    fn report_status(&mut self, i: usize) {
        let c = &self.certificates[i];
        let report = Report::Status {
            name: c.names[0].clone(),
            next_attempt_unix: c.next_attempt,
            failures: c.failures,
            last_error: c.last_error.clone(),
        };
        self.send(&report);
    }

    fn send(&mut self, report: &Report) {
        if let Err(e) = report.send(&mut self.reports) {
            log::error!("ACME: cannot report to the master: {e}");
        }
    }
}

/// Why an attempt failed, as logged and reported.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("rate limited by the CA: {}", with_causes(.0))]
    RateLimited(OrderError),
    #[error("{}", with_causes(.0))]
    Order(OrderError),
    #[error("{0}")]
    Other(String),
}

/// An error and what caused it, as one line (`client error (Connect): tcp
/// connect error: Connection refused`): the HTTP client's own message alone
/// says too little.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl From<OrderError> for Failure {
    fn from(e: OrderError) -> Self {
        if e.is_rate_limit() {
            Failure::RateLimited(e)
        } else {
            Failure::Order(e)
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
