//! Who may read `/metrics` (kubebuilder's "secure metrics" convention): the request's bearer
//! token is reviewed by the API server (TokenReview), and the user it names must be allowed the
//! verb `get` on the non-resource URL `/metrics` (SubjectAccessReview; the chart's ClusterRole
//! `<release>-metrics-reader` grants it). `/healthz` and `/readyz` are not guarded.
//!
//! Answers are kept for a short while ([`MetricsAuth::new`]: 30 s in the operator, at most 1,024
//! tokens), so that a scraper does not cost two API calls per scrape. The cache is keyed by a
//! hash of the token under a per-process random key, never by the token itself, and no token is
//! ever logged.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// The non-resource URL and verb a reader must be allowed.
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and authorized: served.
    Allowed,
    /// Authenticated, not authorized: 403.
    Forbidden,
    /// No bearer token, or one the API server does not accept: 401.
    Unauthenticated,
}

/// Why a request could not be judged (503): no client yet, or the API server did not answer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("not connected to the Kubernetes API yet")]
    NotReady,
    #[error("{0} failed")]
    Review(&'static str),
}

/// Reviews bearer tokens for `/metrics`, with a small time-limited cache of the answers.
pub struct MetricsAuth {
    client: OnceLock<kube::Client>,
    cache: Mutex<HashMap<u64, (Instant, Verdict)>>,
    ttl: Duration,
    capacity: usize,
    keys: std::collections::hash_map::RandomState,
    reviews: AtomicU64,
}

impl MetricsAuth {
    /// Answers are kept `ttl`, for at most `capacity` tokens (when full, expired answers are
    /// dropped; if none has expired, the new answer is not kept).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        MetricsAuth {
            client: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
            ttl,
            capacity,
            keys: std::collections::hash_map::RandomState::new(),
            reviews: AtomicU64::new(0),
        }
    }

    /// The client the reviews are made with (the operator's own). Until it is set, requests
    /// with a token get 503.
    pub fn set_client(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }

    /// TokenReviews made so far (each followed by at most one SubjectAccessReview).
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// The verdict for a request with this `Authorization` header.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Result<Verdict, AuthError> {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Ok(Verdict::Unauthenticated);
        };
        let key = self.keys.hash_one(token);
        if let Some(verdict) = self.cached(key) {
            return Ok(verdict);
        }
        let client = self.client.get().ok_or(AuthError::NotReady)?.clone();
        self.reviews.fetch_add(1, Ordering::Relaxed);
        let verdict = review(client, token).await?;
        self.remember(key, verdict);
        Ok(verdict)
    }

    fn cached(&self, key: u64) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, verdict)| *verdict)
    }

    fn remember(&self, key: u64, verdict: Verdict) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.capacity {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if cache.len() < self.capacity {
            cache.insert(key, (Instant::now(), verdict));
        }
    }

    /// Answers kept now (expired ones included until they are dropped).
    pub fn cached_answers(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One TokenReview, then (if authenticated) one SubjectAccessReview for `get /metrics`.
async fn review(client: kube::Client, token: &str) -> Result<Verdict, AuthError> {
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: None,
        },
        ..Default::default()
    };
    let pp = PostParams::default();
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&pp, &tr)
        .await
        .map_err(|e| {
            // The error never carries the request body: only the status is logged.
            tracing::warn!(error = %kube_error_kind(&e), "metrics: TokenReview failed");
            AuthError::Review("TokenReview")
        })?;
    let status = answer.status.unwrap_or_default();
    let user = match (status.authenticated, status.user) {
        (Some(true), Some(user)) => user,
        _ => return Ok(Verdict::Unauthenticated),
    };
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            uid: user.uid,
            groups: user.groups,
            extra: user.extra,
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(METRICS_PATH.into()),
                verb: Some(METRICS_VERB.into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client)
        .create(&pp, &sar)
        .await
        .map_err(|e| {
            tracing::warn!(error = %kube_error_kind(&e), "metrics: SubjectAccessReview failed");
            AuthError::Review("SubjectAccessReview")
        })?;
    Ok(if answer.status.is_some_and(|s| s.allowed) {
        Verdict::Allowed
    } else {
        Verdict::Forbidden
    })
}

/// What went wrong with a review, without anything the request carried.
fn kube_error_kind(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        _ => "no answer from the API server".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let t = |s: &str| bearer_token(&HeaderValue::from_str(s).unwrap()).map(String::from);
        assert_eq!(t("Bearer abc.def"), Some("abc.def".into()));
        assert_eq!(t("bearer   abc "), Some("abc".into()));
        assert_eq!(t("Basic abc"), None);
        assert_eq!(t("Bearer "), None);
        assert_eq!(t("Bearer"), None);
    }

    #[tokio::test]
    async fn no_token_is_unauthenticated_and_a_token_without_client_is_not_ready() {
        let auth = MetricsAuth::new(Duration::from_secs(30), 4);
        assert_eq!(auth.check(None).await.unwrap(), Verdict::Unauthenticated);
        let h = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        assert_eq!(
            auth.check(Some(&h)).await.unwrap(),
            Verdict::Unauthenticated
        );
        let h = HeaderValue::from_static("Bearer some-token");
        assert!(matches!(
            auth.check(Some(&h)).await,
            Err(AuthError::NotReady)
        ));
        assert_eq!(auth.reviews(), 0);
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let auth = MetricsAuth::new(Duration::from_millis(50), 2);
        auth.remember(1, Verdict::Allowed);
        auth.remember(2, Verdict::Forbidden);
        auth.remember(3, Verdict::Allowed); // full, nothing expired: not kept
        assert_eq!(auth.cached(1), Some(Verdict::Allowed));
        assert_eq!(auth.cached(2), Some(Verdict::Forbidden));
        assert_eq!(auth.cached(3), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(auth.cached(1), None, "expired");
        auth.remember(3, Verdict::Allowed); // full of expired answers: they go
        assert_eq!(auth.cached(3), Some(Verdict::Allowed));
        assert_eq!(auth.cached_answers(), 1);
    }
}
