//! One order (RFC 8555 section 7.4): ask for the names, publish a challenge
//! per pending authorization on the board for the workers to answer, tell
//! the CA to validate, then finalize with a CSR for a key made for this
//! certificate and download the chain. The challenges leave the board when
//! the order ends, whichever way it ends.

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType as AcmeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use std::time::Duration;
use tine_config::AcmeChallenge;
use tine_tls::{Challenge, ChallengeBoard, ChallengeType};

/// How long the CA may take to validate, and to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Refused(String),
    #[error("cannot make the certificate's key or CSR: {0}")]
    Key(String),
}

impl OrderError {
    /// The ACME problem type (`urn:ietf:params:acme:error:...`), if the CA
    /// sent one.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            OrderError::Acme(instant_acme::Error::Api(p)) => p.r#type.as_deref(),
            _ => None,
        }
    }

    pub fn is_rate_limit(&self) -> bool {
        self.problem_type() == Some("urn:ietf:params:acme:error:rateLimited")
    }

    /// The account is gone from the CA (a test CA restarted, or it was
    /// deactivated): register again.
    pub fn account_is_gone(&self) -> bool {
        matches!(
            self.problem_type(),
            Some(
                "urn:ietf:params:acme:error:accountDoesNotExist" | "urn:ietf:params:acme:error:unauthorized"
            )
        )
    }
}

/// What an order yields: the chain and its key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Challenges this order published, withdrawn when it is dropped.
struct Published<'a> {
    board: &'a ChallengeBoard,
    challenges: Vec<Challenge>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for c in &self.challenges {
            self.board.withdraw(c);
        }
    }
}

/// Runs one order for `names` with `kind` challenges.
pub async fn obtain(
    account: &Account,
    names: &[String],
    kind: AcmeChallenge,
    board: &ChallengeBoard,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Published { board, challenges: Vec::new() };
    let (acme_type, board_type) = match kind {
        AcmeChallenge::Http01 => (AcmeType::Http01, ChallengeType::Http01),
        AcmeChallenge::TlsAlpn01 => (AcmeType::TlsAlpn01, ChallengeType::TlsAlpn01),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError::Refused(format!(
                    "the CA holds the authorization for {} as {other:?}",
                    authorization.identifier()
                )))
            }
        }
        let name = authorization.identifier().to_string();
        let Some(mut challenge) = authorization.challenge(acme_type.clone()) else {
            return Err(OrderError::Refused(format!(
                "the CA offers no {} challenge for {name}",
                kind.name()
            )));
        };
        let entry = Challenge {
            kind: board_type,
            name: name.to_ascii_lowercase(),
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_string(),
        };
        if !published.board.publish(&entry) {
            return Err(OrderError::Refused(format!(
                "cannot publish the challenge for {name}: the board is full or its token is too long"
            )));
        }
        published.challenges.push(entry);
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = match order.poll_ready(&retries).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(problem)) => {
            return Err(OrderError::Refused(describe_invalid(&mut order, Some(problem.to_string())).await))
        }
        Err(e) => return Err(e.into()),
    };
    if status != OrderStatus::Ready {
        return Err(OrderError::Refused(describe_invalid(&mut order, None).await));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| OrderError::Key(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| OrderError::Key(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| OrderError::Key(e.to_string()))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    Ok(Issued { chain_pem, key_pem: key.serialize_pem() })
}

/// Says why validation failed: the first challenge error the CA recorded.
async fn describe_invalid(order: &mut instant_acme::Order, problem: Option<String>) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let _ = authorization.refresh().await;
        let name = authorization.identifier().to_string();
        if let Some(error) = authorization.challenges.iter().find_map(|c| c.error.as_ref()) {
            return format!("validation of {name} failed: {error}");
        }
    }
    match problem {
        Some(p) => format!("the order failed: {p}"),
        None => "the order became invalid without a reason from the CA".to_string(),
    }
}
