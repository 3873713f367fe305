//! The floor under a cold start, measured beside it. N SessionTokens are made Ready without the
//! operator, by the least any operator must do: hold a watch of the SessionTokens and a
//! metadata watch of the Secrets, and for each SessionToken create its output Secret and write
//! its status, once each. The writer runs as the operator's user (same authentication, RBAC and
//! audit path), with at most [`API_CONCURRENCY`] requests in flight (the operator's default
//! `--api-concurrency`), bodies of the operator's shape and size (the Secret's seven keys, its
//! labels, annotations and owner reference; a status with the same three conditions), metadata-
//! only responses, and no STS call.
//!
//! Both runs are timed and accounted the same way (operator start, or writer start, to all
//! Ready as the bench's watch sees it; the machine's core-seconds over that span). What the
//! operator's run takes beyond this one is the operator's own cost (its STS calls included);
//! this one is what the control plane costs on this machine at two writes per SessionToken.

use super::{
    MachineWork, OPERATOR_USER, Opts, Requests, Run, Tracker, World, operator_requests, settle,
};
use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// Requests in flight at most: the operator's default `--api-concurrency`.
const API_CONCURRENCY: usize = 8;
/// The operator's field manager.
const FIELD_MANAGER: &str = "sts-session-operator";
/// What the operator asks its writes to return.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

#[derive(serde::Serialize)]
pub(super) struct Floor {
    pub n: usize,
    pub all_ready_s: f64,
    pub requests: Requests,
    pub machine: MachineWork,
}

/// N SessionTokens created as for the cold start, then made Ready by the floor writer.
pub(super) async fn floor(world: &World, opts: &Opts, n: usize) -> Result<Floor> {
    let ns = world.namespace(&format!("bench-floor-{n}")).await?;
    eprintln!("bench: floor {n}: creating {n} SessionTokens in {ns}");
    world
        .create_tokens(&ns, n, world.source_spec(), opts.create_concurrency)
        .await?;
    let mut tracker = Tracker::start(world.sessions(&ns));
    tracker.wait_listed(n).await?;
    let client = world.cp.client_as(OPERATOR_USER).await?;
    eprintln!("bench: floor {n}: starting the writer");
    let run = Run::start();
    let writer = tokio::spawn(write_all(client, ns.clone(), world.st_resource.clone()));
    let ready = run
        .until_all_ready(&mut tracker, n, opts, &format!("floor {n}"))
        .await;
    writer.abort();
    let (all_ready, machine) = ready?;
    settle(&world.cp, &ns, run.since, Duration::from_secs(3)).await?;
    Ok(Floor {
        n,
        all_ready_s: all_ready.as_secs_f64(),
        requests: operator_requests(&world.cp, &ns, run.since, None)?,
        machine,
    })
}

/// The watches, and two writes for each SessionToken the watch shows (once per name).
async fn write_all(client: Client, ns: String, sessions: ApiResource) -> Result<()> {
    // As the operator's: every Secret of the namespace, metadata only, paged from etcd.
    let secrets = Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &ns);
    let _drain = AbortOnDrop(tokio::spawn(async move {
        let stream = watcher(secrets, watcher::Config::default());
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    }));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &sessions);
    let urls = Urls {
        secrets: Api::<Secret>::namespaced(client.clone(), &ns)
            .resource_url()
            .to_string(),
        sessions: api.resource_url().to_string(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let _watch = AbortOnDrop(tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().any_semantic());
        futures::pin_mut!(stream);
        let mut seen = HashSet::new();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event
                && seen.insert(o.name_any())
                && tx
                    .send((o.name_any(), o.uid().unwrap_or_default()))
                    .is_err()
            {
                return;
            }
        }
    }));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .map(|(name, uid)| write_one(&client, &urls, name, uid))
    .buffer_unordered(API_CONCURRENCY)
    .try_for_each(|()| async { Ok(()) })
    .await
}

/// A task that ends with its handle: the writer's watches end when the writer is aborted
/// (a dropped `JoinHandle` would leave them watching, and retrying once the control plane is
/// gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the two writes go, worked out once.
struct Urls {
    secrets: String,
    sessions: String,
}

async fn write_one(client: &Client, urls: &Urls, name: String, uid: String) -> Result<()> {
    let now = Timestamp::now();
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let body = serde_json::to_vec(&secret_body(&name, &uid, now))?;
    let req = kube::core::Request::new(urls.secrets.as_str()).create(&pp, body)?;
    send(client, req).await.context("creating a Secret")?;

    // The operator's status write: a JSON Patch `add /status` (kube's request builder, as the
    // operator uses it, would need the json-patch crate here only to build the same bytes).
    let ops = json!([{ "op": "add", "path": "/status", "value": status_body(&name, now) }]);
    let req = hyper::http::Request::patch(format!(
        "{}/{name}/status?fieldManager={FIELD_MANAGER}",
        urls.sessions
    ))
    .header(
        hyper::http::header::CONTENT_TYPE,
        "application/json-patch+json",
    )
    .body(serde_json::to_vec(&ops)?)?;
    send(client, req).await.context("writing a status")?;
    Ok(())
}

/// Sends a write asking for metadata only, as the operator does; the response is not parsed
/// beyond being JSON (the operator reads one field of it).
async fn send(client: &Client, mut req: hyper::http::Request<Vec<u8>>) -> Result<()> {
    req.headers_mut().insert(
        hyper::http::header::ACCEPT,
        hyper::http::HeaderValue::from_static(METADATA_ONLY),
    );
    let _: serde::de::IgnoredAny = client.request(req).await?;
    Ok(())
}

/// A value of `len` characters (the sizes of the operator's output for the STS test double's
/// sessions).
fn filler(len: usize) -> String {
    "A".repeat(len)
}

/// RFC 3339 in whole seconds, as the operator writes times.
fn seconds(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn secret_body(name: &str, uid: &str, now: Timestamp) -> Value {
    let expiration = now + Duration::from_secs(12 * 3600);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER,
                       "stssession.dev/session-token-uid": uid},
            "annotations": {"stssession.dev/expiration": seconds(expiration),
                            "stssession.dev/session-token": name},
            "ownerReferences": [{"apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
                                 "name": name, "uid": uid,
                                 "controller": true, "blockOwnerDeletion": true}],
        },
        "stringData": {
            "AWS_ACCESS_KEY_ID": filler(20), "AWS_SECRET_ACCESS_KEY": filler(40),
            "AWS_SESSION_EXPIRATION": filler(20), "AWS_SESSION_TOKEN": filler(417),
            "config": filler(91), "credential-process.json": filler(604),
            "credentials": filler(554),
        },
    })
}

fn status_body(name: &str, now: Timestamp) -> Value {
    let expiration = now + Duration::from_secs(12 * 3600);
    let renewal = now + Duration::from_secs(8 * 3600);
    let condition = |kind: &str, reason: &str, message: String| {
        json!({"type": kind, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": seconds(now), "observedGeneration": 1})
    };
    json!({
        "accessKeyId": "ASIADWNEOYIHAQXEPWJT",
        "conditions": [
            condition("Issuing", "Succeeded",
                format!("session ASIADWNEOYIHAQXEPWJT issued, expires {}", seconds(expiration))),
            condition("ConsumerRefresh", "RenewWindowSufficient",
                "sessions are renewed 3h57m before they expire: credential_process consumers \
                 see the new session before they refresh".into()),
            condition("Ready", "Issued",
                format!("session valid until {}; renews at {}", seconds(expiration), seconds(renewal))),
        ],
        "expiration": seconds(expiration), "issuedAt": seconds(now),
        "observedGeneration": 1, "renewalTime": seconds(renewal), "rotations": 1,
        "secretName": name, "sessionHash": "001407324e3e134a",
    })
}
