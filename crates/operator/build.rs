//! Compiles the real-cluster test in when `KUBECONFIG` names a cluster; without one it
//! is ignored, and says why.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kube_cluster)");
    println!("cargo::rerun-if-env-changed=KUBECONFIG");
    if std::env::var_os("KUBECONFIG").is_some_and(|value| !value.is_empty()) {
        println!("cargo::rustc-cfg=kube_cluster");
    }
}
