//! Against a real Kubernetes cluster (`KUBECONFIG`): the CRDs install, and the operator,
//! run in this process against a Gantry server on loopback, registers a WorkerPool's
//! workers, reports them in the status, and removes them when scaled to zero. Run Pods
//! are not exercised here: they would need the server reachable from the cluster's nodes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gantry_operator::config::OperatorConfig;
use gantry_operator::crd::{Worker, WorkerPool, definitions};
use gantry_operator::reconcile::{Context, reconcile};
use gantry_testkit::TestServer;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[tokio::test]
#[cfg_attr(not(kube_cluster), ignore = "needs a Kubernetes cluster: set KUBECONFIG and rebuild")]
async fn a_worker_pool_scales_up_and_down_on_a_real_cluster() {
    gantry_testkit::install_crypto_provider();
    let client = Client::try_default().await.expect("KUBECONFIG names a reachable cluster");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in definitions() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("gantry-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("the CRDs install");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let namespace = format!("gantry-test-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": namespace } })).unwrap(),
        )
        .await
        .unwrap();

    let server = TestServer::start().await;
    let created = server.create_pool("cluster").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = json!({
        "metadata": { "name": "pool" },
        "stringData": { "token": created.token, "key": created.private_key_pem },
    });
    secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    let pools: Api<WorkerPool> = Api::namespaced(client.clone(), &namespace);
    let pool = json!({
        "apiVersion": "workers.gantry.dev/v1beta1", "kind": "WorkerPool",
        "metadata": { "name": "wp" },
        "spec": {
            "poolSize": 2,
            "token": { "name": "pool", "key": "token" },
            "privateKey": { "name": "pool", "key": "key" },
        },
    });
    pools.create(&PostParams::default(), &serde_json::from_value(pool).unwrap()).await.unwrap();

    let env = [("GANTRY_OPERATOR_LAUNCHER_IMAGE", "gantry:test")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let ctx = Arc::new(Context::new(client.clone(), OperatorConfig::from_env(&env).unwrap(), true));
    let workers: Api<Worker> = Api::namespaced(client.clone(), &namespace);
    let controller = tokio::spawn(
        Controller::new(pools.clone(), watcher::Config::default())
            .owns(workers.clone(), watcher::Config::default())
            .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(2)), ctx)
            .for_each(|_| async {}),
    );

    let status =
        wait_for(&pools, |pool| pool.status.as_ref().is_some_and(|s| s.actual_pool_size == 2))
            .await;
    assert_eq!(status.status.unwrap().desired_pool_size, 2);
    assert_eq!(workers.list(&ListParams::default()).await.unwrap().items.len(), 2);

    pools
        .patch("wp", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "poolSize": 0 } })))
        .await
        .unwrap();
    wait_for(&pools, |pool| pool.status.as_ref().is_some_and(|s| s.actual_pool_size == 0)).await;
    assert!(workers.list(&ListParams::default()).await.unwrap().items.is_empty());

    controller.abort();
    namespaces.delete(&namespace, &DeleteParams::default()).await.unwrap();
}

async fn wait_for(pools: &Api<WorkerPool>, done: impl Fn(&WorkerPool) -> bool) -> WorkerPool {
    for _ in 0..120 {
        let pool = pools.get("wp").await.unwrap();
        if done(&pool) {
            return pool;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the WorkerPool did not reach the expected status within 60 s");
}
