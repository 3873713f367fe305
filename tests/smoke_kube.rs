//! Smoke test of the local control plane (testkit): CRDs with schema validation and a status
//! subresource, watches, garbage collection by kube-controller-manager, namespace deletion,
//! the pinned version, token users under RBAC, TokenRequest, and the audit log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use testkit::ControlPlane;
use testkit::control_plane::{ADMIN, CONTROLLER_MANAGER_USER};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.stssession.dev
spec:
  group: smoke.stssession.dev
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
    - name: v1
      served: true
      storage: true
      subresources: { status: {} }
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: { type: integer, minimum: 1 }
            status:
              type: object
              properties:
                phase: { type: string }
"#;

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "smoke.stssession.dev",
        "v1",
        "Widget",
    ))
}

fn widget(name: &str, replicas: i64) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "smoke.stssession.dev/v1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    }))?)
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next object from the watcher that matches `pred` (within 30 s).
async fn next_matching(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<DynamicObject>,
    pred: impl Fn(&DynamicObject) -> bool,
) -> Result<DynamicObject> {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(obj) = seen.recv().await {
            if pred(&obj) {
                return Some(obj);
            }
        }
        None
    })
    .await;
    found
        .ok()
        .flatten()
        .context("the watcher did not deliver the expected object")
}

fn api_error(r: Result<impl std::fmt::Debug, kube::Error>) -> Result<kube::core::Status> {
    match r {
        Err(kube::Error::Api(status)) => Ok(*status),
        other => bail!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crd_watch_status_validation_gc_and_audit() -> Result<()> {
    let cp = ControlPlane::shared().await;
    cp.apply_yaml(CRD).await?;
    let ns = cp.new_namespace("smoke-kube").await?;
    let since = jiff::Timestamp::now();
    let client = cp.admin_client().await?;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &widget_resource());

    // A watcher sees what we do.
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(widgets.clone(), watcher::Config::default()).applied_objects();
    let watch_task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(obj) = item
                && tx.send(obj).is_err()
            {
                break;
            }
        }
    });
    let created = widgets
        .create(&PostParams::default(), &widget("w1", 2)?)
        .await?;
    let uid = created.metadata.uid.clone().context("no uid")?;
    next_matching(&mut seen, |o| o.metadata.name.as_deref() == Some("w1")).await?;

    // Status through the status subresource; the watcher sees it.
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Ready" } })),
        )
        .await?;
    next_matching(&mut seen, |o| o.data["status"]["phase"] == "Ready").await?;
    // Writing status through the main resource is ignored (the subresource is really on).
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Hacked" } })),
        )
        .await?;
    assert_eq!(widgets.get("w1").await?.data["status"]["phase"], "Ready");
    watch_task.abort();

    // Server-side schema validation.
    let status = api_error(
        widgets
            .create(&PostParams::default(), &widget("w-bad", 0)?)
            .await,
    )?;
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.replicas"),
        "{}",
        status.message
    );
    assert!(widgets.get_opt("w-bad").await?.is_none());

    // Garbage collection by kube-controller-manager.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "w1-owned",
            "ownerReferences": [{
                "apiVersion": "smoke.stssession.dev/v1", "kind": "Widget", "name": "w1", "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "data": { "k": "v" },
    }))?;
    configmaps.create(&PostParams::default(), &owned).await?;
    let unowned: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "unowned" } }))?;
    configmaps.create(&PostParams::default(), &unowned).await?;
    widgets.delete("w1", &DeleteParams::default()).await?;
    let gc_started = Instant::now();
    eventually(
        "the owned ConfigMap to be garbage-collected",
        Duration::from_secs(120),
        || async {
            Ok(configmaps
                .get_opt("w1-owned")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    eprintln!(
        "garbage collection took {:.1} s",
        gc_started.elapsed().as_secs_f64()
    );
    assert!(
        configmaps.get_opt("unowned").await?.is_some(),
        "GC deleted an object without owner"
    );

    // The audit log has the admin's create and status write, and the collector's delete.
    let timeout = Duration::from_secs(10);
    cp.wait_for_audit_event(since, timeout, |e| {
        e.username() == ADMIN
            && e.verb == "create"
            && e.api_group() == "smoke.stssession.dev"
            && e.resource() == "widgets"
            && e.namespace() == ns
            && e.name() == "w1"
            && e.code() == Some(201)
    })
    .await
    .context("admin create of w1 in the audit log")?;
    cp.wait_for_audit_event(since, timeout, |e| {
        e.username() == ADMIN
            && e.verb == "patch"
            && e.name() == "w1"
            && e.subresource() == "status"
    })
    .await
    .context("status patch in the audit log")?;
    cp.wait_for_audit_event(since, timeout, |e| {
        e.username() == CONTROLLER_MANAGER_USER
            && e.verb == "delete"
            && e.resource() == "configmaps"
            && e.namespace() == ns
            && e.name() == "w1-owned"
    })
    .await
    .context("the garbage collector's delete in the audit log")?;
    let admin_writes = cp.writes_by(ADMIN, since)?;
    assert!(admin_writes.iter().all(|e| e.is_write()));
    assert!(admin_writes.len() >= 6, "{admin_writes:#?}");
    assert!(cp.writes_by("mallory", since)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn version_users_rbac_tokens_and_namespace_deletion() -> Result<()> {
    let cp = ControlPlane::shared().await;
    let admin = cp.admin_client().await?;

    let version = admin.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.37.2");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37")
    );

    // Token users are who they say they are.
    let alice = cp.client_as("alice").await?;
    let review = Api::<SelfSubjectReview>::all(alice.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .context("no userInfo")?;
    assert_eq!(user.username.as_deref(), Some("alice"));
    let groups = user.groups.unwrap_or_default();
    assert!(groups.iter().any(|g| g == "team-a"), "{groups:?}");
    assert!(!groups.iter().any(|g| g == "system:masters"), "{groups:?}");

    // RBAC: nobody but admin can read secrets until granted; a grant to alice is hers only.
    let ns = cp.new_namespace("smoke-rbac").await?;
    let status = api_error(
        Api::<Secret>::namespaced(cp.client_as("mallory").await?, &ns)
            .list(&Default::default())
            .await,
    )?;
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains(r#"User "mallory" cannot list resource "secrets""#),
        "{}",
        status.message
    );
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "secret-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"] }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "team-a-reads-secrets" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "team-a" }],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;
    eventually(
        "alice to be allowed to list secrets",
        Duration::from_secs(10),
        || async {
            Ok(Api::<Secret>::namespaced(alice.clone(), &ns)
                .list(&Default::default())
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let status = api_error(
        Api::<Secret>::namespaced(cp.client_as("bob").await?, &ns)
            .list(&Default::default())
            .await,
    )?;
    assert_eq!(status.code, 403, "{status:?}");

    // TokenRequest (service-account signing key) and the token authenticates.
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "robot" } }))?;
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), &ns);
    sas.create(&PostParams::default(), &sa).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request("robot", &PostParams::default(), &request)
        .await?;
    let token = token
        .status
        .and_then(|s| s.token)
        .context("no token in the TokenRequest status")?;
    let robot = cp.client_with_token(&token).await?;
    let review = Api::<SelfSubjectReview>::all(robot)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(username, Some(format!("system:serviceaccount:{ns}:robot")));

    // Namespace deletion is finalized by the namespace controller.
    let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "leftover" } }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let namespaces = Api::<Namespace>::all(admin.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    let started = Instant::now();
    eventually(
        "the namespace to be deleted",
        Duration::from_secs(90),
        || async { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) },
    )
    .await?;
    eprintln!(
        "namespace deletion took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        cp.audit_events()?
            .iter()
            .any(|e| e.verb == "delete" && e.resource() == "namespaces" && e.name() == ns)
    );
    Ok(())
}

#[tokio::test]
async fn private_instance_restarts_with_its_data() -> Result<()> {
    let cp = ControlPlane::start().await?;
    assert!(cp.is_owned());
    let dir = cp.dir().to_path_buf();
    let server = cp.server_url().to_string();
    let cms = Api::<ConfigMap>::namespaced(cp.admin_client().await?, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "survivor" }, "data": { "k": "v" } }),
    )?;
    cms.create(&PostParams::default(), &cm).await?;

    let t = Instant::now();
    cp.stop_apiserver().await?;
    eprintln!("stop_apiserver() took {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        cms.get_opt("survivor").await.is_err(),
        "the API server should be down"
    );
    let started = Instant::now();
    cp.start_apiserver().await?;
    eprintln!(
        "kube-apiserver + etcd restart took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(cp.server_url(), server);
    // Same port, same CA, same data: a fresh client (and the old one) see it.
    let got = Api::<ConfigMap>::namespaced(cp.admin_client().await?, "default")
        .get("survivor")
        .await?;
    assert_eq!(
        got.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v")
    );
    eventually(
        "the old client to reconnect",
        Duration::from_secs(10),
        || async { Ok(cms.get_opt("survivor").await.ok().flatten()) },
    )
    .await?;
    let t = Instant::now();
    cp.restart().await?;
    eprintln!("restart() took {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    cp.restart_controller_manager().await?;
    eprintln!(
        "restart_controller_manager() took {:.1} s",
        t.elapsed().as_secs_f64()
    );

    drop(cp);
    assert!(
        !dir.exists() || testkit::process::keep_scratch(),
        "{} not removed",
        dir.display()
    );
    Ok(())
}
