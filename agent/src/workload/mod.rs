//! Workload identity: which pod, container, workload and service made an LLM call.
//!
//! pid → `/proc/PID/cgroup` → container id → pod (from a watch of this node's pods on the
//! Kubernetes API) → owning workload. Receives: a record's [`ProcessContext`]. Emits: the
//! record's `service_name` and `k8s` fields, and the pods whose series are due for removal.
//!
//! [`pods`] and [`process`] are pure; [`api`] is the thin edge that keeps the pod index
//! current. Pod facts are looked up when a record is made, never cached per process: a new
//! process's pod may reach the index after its first call.

pub mod api;
#[cfg(test)]
mod fake_api_tests;
pub mod pods;
pub mod process;

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::llm::{K8sWorkload, ProcessContext};
pub use pods::{PodIndex, PodRef};

/// The pod index the API watch writes and the pipeline reads.
pub type SharedPods = Arc<Mutex<PodIndex>>;

/// `service.name` by precedence: the process's `OTEL_SERVICE_NAME`, the Kubernetes workload's
/// name, the systemd unit (not for processes in a container, whose cgroup may sit under the
/// container runtime's unit), the executable.
pub fn service_name(ctx: &ProcessContext, k8s: Option<&K8sWorkload>) -> String {
    if let Some(name) = &ctx.service_name_env {
        return name.clone();
    }
    if let Some(w) = k8s.filter(|w| !w.workload_name.is_empty()) {
        return w.workload_name.clone();
    }
    if ctx.container_id.is_none()
        && let Some(unit) = &ctx.systemd_unit
    {
        return unit.clone();
    }
    ctx.executable.clone()
}

/// Resolves records to workloads; without a pod index (no Kubernetes) only `service_name`.
#[derive(Clone, Default)]
pub struct WorkloadResolver {
    pods: Option<SharedPods>,
}

impl WorkloadResolver {
    pub fn new(pods: Option<SharedPods>) -> Self {
        Self { pods }
    }

    /// `service_name` and `k8s` of a record made by the process `ctx`.
    pub fn identify(&self, ctx: &ProcessContext) -> (String, Option<K8sWorkload>) {
        let k8s = match (&self.pods, &ctx.container_id) {
            (Some(pods), Some(id)) => pods.lock().ok().and_then(|index| index.lookup(id)),
            _ => None,
        };
        (service_name(ctx, k8s.as_ref()), k8s)
    }

    /// Pods whose series are due for removal now.
    pub fn expired(&self, now: Instant) -> Vec<PodRef> {
        let Some(pods) = &self.pods else {
            return Vec::new();
        };
        let Ok(mut index) = pods.lock() else {
            return Vec::new();
        };
        index.expire(now);
        index.take_expired()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ctx(env: Option<&str>, unit: Option<&str>, container: Option<&str>) -> ProcessContext {
        ProcessContext {
            pid: 1,
            executable: "python3.12".into(),
            container_id: container.map(str::to_owned),
            service_name_env: env.map(str::to_owned),
            systemd_unit: unit.map(str::to_owned),
        }
    }

    #[test]
    fn service_name_precedence() {
        let w = K8sWorkload {
            workload_name: "checkout".into(),
            ..K8sWorkload::default()
        };
        let name = |c: &ProcessContext, k: Option<&K8sWorkload>| service_name(c, k);
        assert_eq!(name(&ctx(Some("api"), Some("u"), None), Some(&w)), "api");
        assert_eq!(name(&ctx(None, Some("u"), Some("c")), Some(&w)), "checkout");
        assert_eq!(name(&ctx(None, Some("llm-batch"), None), None), "llm-batch");
        assert_eq!(
            name(&ctx(None, Some("containerd"), Some("c")), None),
            "python3.12",
            "a container's cgroup under a runtime's unit does not name it"
        );
        assert_eq!(name(&ctx(None, None, None), None), "python3.12");
    }

    #[test]
    fn resolver_reads_the_index_at_record_time() {
        let pods: SharedPods = Arc::new(Mutex::new(PodIndex::new(Duration::ZERO)));
        let resolver = WorkloadResolver::new(Some(pods.clone()));
        let c = ctx(None, None, Some("abc"));
        assert_eq!(resolver.identify(&c), ("python3.12".into(), None));
        let pod: pods::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "ns", "uid": "u",
                "ownerReferences": [{"kind": "StatefulSet", "name": "web", "controller": true}]},
            "status": {"containerStatuses": [{"name": "main", "containerID": "containerd://abc"}]}
        }))
        .expect("pod");
        pods.lock().expect("lock").upsert(&pod);
        let (service, k8s) = resolver.identify(&c);
        assert_eq!(service, "web");
        assert_eq!(k8s.map(|w| w.container).as_deref(), Some("main"));
        pods.lock().expect("lock").delete("u", Instant::now());
        assert_eq!(resolver.expired(Instant::now()).len(), 1);
        assert_eq!(WorkloadResolver::default().identify(&c).1, None);
    }
}
