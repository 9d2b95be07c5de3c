//! Pods as the Kubernetes API describes them → an index from container id to pod and workload.
//!
//! Receives: pod objects (from a list or a watch event) and deletions. Emits: the
//! [`K8sWorkload`] of a container id, and the pods whose series should now be removed.
//! Pure: time is passed in, nothing here talks to the network.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::llm::K8sWorkload;

/// The parts of a pod tokentap reads (everything else in the object is ignored).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct OwnerReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; empty while the container is
    /// being created.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

/// The label the Deployment controller puts on a ReplicaSet's pods; the ReplicaSet is named
/// `<deployment>-<hash>`.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The container id of a status's `containerID` (`<runtime>://<id>`), lowercase, or `None`
/// when the container has none yet.
pub fn container_id(status_id: &str) -> Option<String> {
    let id = status_id
        .split_once("://")
        .map_or(status_id, |(_, id)| id)
        .trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// The workload that owns a pod: `(kind, name)`.
///
/// - ReplicaSet → its Deployment when the ReplicaSet is named `<deployment>-<pod-template-hash>`
///   (the Deployment controller's naming; the agent cannot read ReplicaSets, only pods), else
///   the ReplicaSet itself.
/// - Job → its CronJob when the Job is named `<cronjob>-<8 or more digits>` (the CronJob
///   controller names Jobs after the scheduled minute since the epoch); a hand-made Job named
///   like that is taken for a CronJob's too.
/// - StatefulSet, DaemonSet and other controllers → themselves.
/// - A static (mirror) pod, owned by its Node → kind `Pod`, named without the `-<node>` suffix.
/// - A bare pod → kind `Pod`, the pod's name.
pub fn owner_workload(meta: &ObjectMeta) -> (String, String) {
    let owner = meta
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.first());
    let Some(owner) = owner else {
        return ("Pod".into(), meta.name.clone());
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = meta
                .labels
                .get(POD_TEMPLATE_HASH)
                .filter(|h| !h.is_empty())
                .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            match deployment {
                Some(d) => ("Deployment".into(), d.to_owned()),
                None => ("ReplicaSet".into(), owner.name.clone()),
            }
        }
        "Job" => match cronjob_of_job(&owner.name) {
            Some(cronjob) => ("CronJob".into(), cronjob.to_owned()),
            None => ("Job".into(), owner.name.clone()),
        },
        "Node" => {
            let name = meta
                .name
                .strip_suffix(owner.name.as_str())
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|n| !n.is_empty())
                .unwrap_or(&meta.name);
            ("Pod".into(), name.to_owned())
        }
        _ => (owner.kind.clone(), owner.name.clone()),
    }
}

/// Fewest digits of a CronJob's Job suffix: minutes since 1970 have had 8 digits since 1989.
const CRONJOB_SUFFIX_DIGITS: usize = 8;

fn cronjob_of_job(job: &str) -> Option<&str> {
    let (cronjob, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= CRONJOB_SUFFIX_DIGITS
        && suffix.bytes().all(|b| b.is_ascii_digit())
        && !cronjob.is_empty())
    .then_some(cronjob)
}

/// Which pod, by namespace and name: the key of its series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

struct Entry {
    meta: PodRef,
    workload_kind: String,
    workload_name: String,
    /// `(container id, container name)`.
    containers: Vec<(String, String)>,
    deleted_at: Option<Instant>,
}

/// Most deleted pods remembered while their series wait for expiry; beyond it the oldest
/// expire early (pod churn cannot grow the index without bound).
pub const MAX_DELETED: usize = 8192;

/// Pods on this node by uid, and their containers by id. Deleted pods stay (still resolving
/// late records) until their series expire `ttl` after the deletion.
pub struct PodIndex {
    ttl: Duration,
    pods: HashMap<String, Entry>,
    by_container: HashMap<String, String>,
    /// Pods held per namespace and name (a StatefulSet's pod is recreated under its name).
    by_name: HashMap<PodRef, usize>,
    /// Deleted pods' uids in deletion order.
    deleted: VecDeque<String>,
    /// Pods whose series are due for removal, until the metric sinks take them.
    expired: Vec<PodRef>,
}

impl PodIndex {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            pods: HashMap::new(),
            by_container: HashMap::new(),
            by_name: HashMap::new(),
            deleted: VecDeque::new(),
            expired: Vec::new(),
        }
    }

    /// Adds or updates a pod (ADDED, MODIFIED, or an item of a list).
    pub fn upsert(&mut self, pod: &Pod) {
        let meta = &pod.metadata;
        if meta.uid.is_empty() {
            return;
        }
        let (workload_kind, workload_name) = owner_workload(meta);
        let containers: Vec<(String, String)> = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .chain(&pod.status.ephemeral_container_statuses)
            .filter_map(|c| container_id(&c.container_id).map(|id| (id, c.name.clone())))
            .collect();
        self.unlink(&meta.uid);
        if self
            .pods
            .get(&meta.uid)
            .is_some_and(|e| e.deleted_at.is_some())
        {
            // Listed again after a deletion was inferred: alive after all.
            self.deleted.retain(|uid| uid != &meta.uid);
        }
        for (id, _) in &containers {
            self.by_container.insert(id.clone(), meta.uid.clone());
        }
        let name = PodRef {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        };
        if !self.pods.contains_key(&meta.uid) {
            *self.by_name.entry(name.clone()).or_default() += 1;
        }
        self.pods.insert(
            meta.uid.clone(),
            Entry {
                meta: name,
                workload_kind,
                workload_name,
                containers,
                deleted_at: None,
            },
        );
    }

    /// A pod is gone (DELETED); its series expire `ttl` from `now`.
    pub fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(entry) = self.pods.get_mut(uid)
            && entry.deleted_at.is_none()
        {
            entry.deleted_at = Some(now);
            self.deleted.push_back(uid.to_owned());
        }
        while self.deleted.len() > MAX_DELETED {
            if let Some(oldest) = self.deleted.pop_front() {
                self.remove(&oldest);
            }
        }
    }

    /// A fresh list of the node's pods: they replace the index; pods missing from it were
    /// deleted while the watch was away.
    pub fn replace_all(&mut self, pods: &[Pod], now: Instant) {
        let listed: std::collections::HashSet<&str> =
            pods.iter().map(|p| p.metadata.uid.as_str()).collect();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, e)| e.deleted_at.is_none() && !listed.contains(uid.as_str()))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
        for pod in pods {
            self.upsert(pod);
        }
    }

    /// Where the container `container_id` (as found in a cgroup path) runs.
    pub fn lookup(&self, container_id: &str) -> Option<K8sWorkload> {
        let uid = self.by_container.get(container_id)?;
        let entry = self.pods.get(uid)?;
        let container = entry
            .containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, name)| name.clone())
            .unwrap_or_default();
        Some(K8sWorkload {
            namespace: entry.meta.namespace.clone(),
            pod: entry.meta.name.clone(),
            container,
            workload_name: entry.workload_name.clone(),
            workload_kind: entry.workload_kind.clone(),
        })
    }

    /// Removes pods deleted `ttl` or more before `now`, queueing their series for removal.
    pub fn expire(&mut self, now: Instant) {
        while let Some(uid) = self.deleted.front() {
            let due = self
                .pods
                .get(uid)
                .and_then(|e| e.deleted_at)
                .is_none_or(|at| now.saturating_duration_since(at) >= self.ttl);
            if !due {
                break;
            }
            if let Some(uid) = self.deleted.pop_front() {
                self.remove(&uid);
            }
        }
    }

    /// Pods whose series are due for removal since the last call.
    pub fn take_expired(&mut self) -> Vec<PodRef> {
        std::mem::take(&mut self.expired)
    }

    /// Pods not deleted.
    pub fn live(&self) -> usize {
        self.pods.len() - self.deleted.len()
    }

    /// Pods held, deleted ones included.
    pub fn held(&self) -> usize {
        self.pods.len()
    }

    fn remove(&mut self, uid: &str) {
        self.unlink(uid);
        let Some(entry) = self.pods.remove(uid) else {
            return;
        };
        // A pod recreated under the same name (a StatefulSet's) shares the series: they stay.
        let holders = self.by_name.get_mut(&entry.meta).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if holders.unwrap_or(0) == 0 {
            self.by_name.remove(&entry.meta);
            self.expired.push(entry.meta);
        }
    }

    fn unlink(&mut self, uid: &str) {
        if let Some(entry) = self.pods.get(uid) {
            for (id, _) in &entry.containers {
                if self.by_container.get(id).is_some_and(|u| u == uid) {
                    self.by_container.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0a1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn deployment_pod(uid: &str, name: &str) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": uid,
                "labels": {"app": "checkout", "pod-template-hash": "7d9f8c6b5"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-7d9f8c6b5", "controller": true}]
            },
            "spec": {"nodeName": "node-1"},
            "status": {
                "containerStatuses": [{"name": "app", "containerID": format!("containerd://{ID}")}],
                "initContainerStatuses": [{"name": "init", "containerID": "cri-o://AB12"}],
                "ephemeralContainerStatuses": [{"name": "debug", "containerID": ""}]
            }
        }))
    }

    fn owned(
        kind: &str,
        name: &str,
        pod_name: &str,
        labels: serde_json::Value,
    ) -> (String, String) {
        let p = pod(
            serde_json::json!({"metadata": {"name": pod_name, "labels": labels,
            "ownerReferences": [{"kind": kind, "name": name, "controller": true}]}}),
        );
        owner_workload(&p.metadata)
    }

    #[test]
    fn container_ids_of_every_runtime() {
        assert_eq!(
            container_id(&format!("containerd://{ID}")).as_deref(),
            Some(ID)
        );
        assert_eq!(container_id("cri-o://ABC").as_deref(), Some("abc"));
        assert_eq!(container_id("docker://abc").as_deref(), Some("abc"));
        assert_eq!(container_id(""), None);
    }

    #[test]
    fn owners_to_workloads() {
        let hash = serde_json::json!({"pod-template-hash": "7d9f8c6b5"});
        let none = serde_json::json!({});
        let s = |k: &str, n: &str| (k.to_owned(), n.to_owned());
        assert_eq!(
            owned(
                "ReplicaSet",
                "checkout-7d9f8c6b5",
                "checkout-7d9f8c6b5-x2x",
                hash.clone()
            ),
            s("Deployment", "checkout")
        );
        // A ReplicaSet not made by a Deployment (no hash label, or a name that does not end
        // in it) is the workload itself.
        assert_eq!(
            owned("ReplicaSet", "legacy", "legacy-abcde", none.clone()),
            s("ReplicaSet", "legacy")
        );
        assert_eq!(
            owned("ReplicaSet", "other-1234", "other-1234-x", hash),
            s("ReplicaSet", "other-1234")
        );
        assert_eq!(
            owned("StatefulSet", "db", "db-0", none.clone()),
            s("StatefulSet", "db")
        );
        assert_eq!(
            owned("DaemonSet", "agent", "agent-x", none.clone()),
            s("DaemonSet", "agent")
        );
        assert_eq!(
            owned(
                "Job",
                "nightly-report-29123456",
                "nightly-report-29123456-abc",
                none.clone()
            ),
            s("CronJob", "nightly-report")
        );
        assert_eq!(
            owned("Job", "migrate-2", "migrate-2-abc", none.clone()),
            s("Job", "migrate-2")
        );
        assert_eq!(
            owned("Node", "node-1", "etcd-node-1", none.clone()),
            s("Pod", "etcd")
        );
        assert_eq!(
            owned("Rollout", "canary", "canary-x", none),
            s("Rollout", "canary")
        );
        let bare = pod(serde_json::json!({"metadata": {"name": "debug-shell"}}));
        assert_eq!(owner_workload(&bare.metadata), s("Pod", "debug-shell"));
    }

    #[test]
    fn index_resolves_containers_of_every_kind() {
        let mut index = PodIndex::new(Duration::from_secs(60));
        index.upsert(&deployment_pod("u1", "checkout-7d9f8c6b5-x2x"));
        let w = index.lookup(ID).expect("indexed");
        assert_eq!(
            w,
            K8sWorkload {
                namespace: "shop".into(),
                pod: "checkout-7d9f8c6b5-x2x".into(),
                container: "app".into(),
                workload_name: "checkout".into(),
                workload_kind: "Deployment".into(),
            }
        );
        assert_eq!(
            index.lookup("ab12").map(|w| w.container).as_deref(),
            Some("init")
        );
        assert_eq!(index.lookup("ffff"), None);
        assert_eq!(index.live(), 1);
    }

    #[test]
    fn deleted_pods_resolve_until_they_expire_once() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut index = PodIndex::new(ttl);
        index.upsert(&deployment_pod("u1", "p1"));
        index.delete("u1", t0);
        index.delete("u1", t0 + ttl); // a repeated deletion does not restart the clock
        index.expire(t0 + ttl / 2);
        assert!(index.lookup(ID).is_some(), "late records still resolve");
        assert!(index.take_expired().is_empty());
        index.expire(t0 + ttl);
        assert_eq!(index.lookup(ID), None);
        assert_eq!(
            index.take_expired(),
            [PodRef {
                namespace: "shop".into(),
                name: "p1".into()
            }]
        );
        assert!(index.take_expired().is_empty());
        assert_eq!(index.held(), 0);
    }

    #[test]
    fn a_recreated_pod_keeps_its_series() {
        let t0 = Instant::now();
        let mut index = PodIndex::new(Duration::from_secs(1));
        index.upsert(&deployment_pod("u1", "db-0"));
        index.delete("u1", t0);
        index.upsert(&deployment_pod("u2", "db-0"));
        index.expire(t0 + Duration::from_secs(2));
        assert!(index.take_expired().is_empty());
        assert!(
            index.lookup(ID).is_some(),
            "the new pod owns the container id now"
        );
    }

    #[test]
    fn a_relist_deletes_what_vanished() {
        let t0 = Instant::now();
        let mut index = PodIndex::new(Duration::ZERO);
        index.upsert(&deployment_pod("u1", "p1"));
        let mut other = deployment_pod("u2", "p2");
        other.status.container_statuses[0].container_id = "containerd://beef".into();
        index.replace_all(&[other], t0);
        index.expire(t0);
        assert_eq!(index.take_expired().len(), 1);
        assert!(index.lookup("beef").is_some());
        assert_eq!(index.live(), 1);
    }

    #[test]
    fn churn_stays_bounded() {
        let t0 = Instant::now();
        let mut index = PodIndex::new(Duration::from_secs(3600));
        for i in 0..(MAX_DELETED * 3) {
            let mut p = deployment_pod(&format!("u{i}"), &format!("p{i}"));
            p.status.container_statuses[0].container_id = format!("containerd://{i:x}");
            p.status.init_container_statuses.clear();
            index.upsert(&p);
            index.delete(&format!("u{i}"), t0);
        }
        assert_eq!(index.held(), MAX_DELETED);
        assert_eq!(index.by_container.len(), MAX_DELETED);
        assert_eq!(index.by_name.len(), MAX_DELETED);
        assert_eq!(index.take_expired().len(), MAX_DELETED * 2);
    }
}
