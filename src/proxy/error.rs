//! What can go wrong while proxying one request, and what the client sees for it
//! (SPEC §4). Bodies are short plain text and never name a backend.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches")]
    NoRoute,
    #[error("the route's access list does not admit the client")]
    Forbidden,
    #[error("over the route's rate limit")]
    RateLimited(u64),
    /// Not a failure: the route answers with a redirect (status, Location).
    #[error("redirect")]
    Redirect(u16, http::HeaderValue),
    #[error("CONNECT: sluice is a reverse proxy, not a tunnel")]
    Connect405,
    #[error("request body larger than max_body_bytes")]
    BodyTooLarge,
    #[error("request head larger than max_header_bytes")]
    HeadTooLarge,
    #[error("no healthy backend in upstream")]
    NoHealthyBackend,
    #[error("every backend at max_inflight_per_backend and queue.max requests waiting")]
    QueueFull,
    #[error("waited queue.timeout for a backend under max_inflight_per_backend")]
    QueueTimeout,
    #[error("backend unreachable")]
    Connect(#[source] super::client::SendError),
    #[error("backend broke off")]
    BrokeOff(#[source] super::client::SendError),
    #[error("backend did not answer within response_timeout")]
    ResponseTimeout,
}

impl ProxyError {
    /// The SPEC §4 status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Redirect(status, _) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY)
            }
            ProxyError::Connect405 => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoHealthyBackend | ProxyError::QueueFull | ProxyError::QueueTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect(_) | ProxyError::BrokeOff(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Why sluice refused the request itself, for the log and `sluice_refused_total`;
    /// None for failures of the backend side (502, 503, 504).
    pub fn refusal(&self) -> Option<crate::telemetry::Refusal> {
        use crate::telemetry::Refusal;
        match self {
            ProxyError::BadRequest(why) => Some(Refusal::BadRequest(why)),
            ProxyError::NoRoute => Some(Refusal::NoRoute),
            ProxyError::Forbidden => Some(Refusal::Acl),
            ProxyError::RateLimited(_) => Some(Refusal::RateLimit),
            ProxyError::Connect405 => Some(Refusal::MethodNotAllowed),
            ProxyError::BodyTooLarge => Some(Refusal::BodyTooLarge),
            ProxyError::HeadTooLarge => Some(Refusal::HeaderTooLarge),
            _ => None,
        }
    }

    /// The client-facing body: fixed text per status.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "400 bad request\n",
            ProxyError::NoRoute => "404 no route matches this request\n",
            ProxyError::Forbidden => "403 forbidden\n",
            ProxyError::RateLimited(_) => "429 too many requests\n",
            ProxyError::Redirect(..) => "",
            ProxyError::Connect405 => "405 CONNECT is not allowed: this is a reverse proxy\n",
            ProxyError::BodyTooLarge => "413 request body too large\n",
            ProxyError::HeadTooLarge => "431 request header fields too large\n",
            ProxyError::NoHealthyBackend => "503 no healthy backend available\n",
            ProxyError::QueueFull | ProxyError::QueueTimeout => "503 every backend is busy\n",
            ProxyError::Connect(_) | ProxyError::BrokeOff(_) => "502 bad gateway\n",
            ProxyError::ResponseTimeout => "504 gateway timeout\n",
        }
    }
}

impl From<crate::balance::NoBackend> for ProxyError {
    fn from(e: crate::balance::NoBackend) -> Self {
        use crate::balance::NoBackend;
        match e {
            NoBackend::Unavailable => ProxyError::NoHealthyBackend,
            NoBackend::QueueFull => ProxyError::QueueFull,
            NoBackend::QueueTimeout => ProxyError::QueueTimeout,
        }
    }
}

/// Flattens an error and its sources into one line for the log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.ends_with(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}
