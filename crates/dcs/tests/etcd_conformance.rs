//! The conformance suite against a real 3-member etcd cluster.

use std::time::Duration;

use pgwarden_dcs::conformance::{assert_conformance, Harness};
use pgwarden_dcs::{EtcdDcs, EtcdSettings};
use pgwarden_testbed::etcd::EtcdCluster;

struct Etcd {
    endpoints: Vec<String>,
}

#[async_trait::async_trait]
impl Harness for Etcd {
    type Store = EtcdDcs;

    async fn open(&self, scope: &str) -> EtcdDcs {
        EtcdDcs::connect(EtcdSettings {
            endpoints: self.endpoints.clone(),
            namespace: "/service".into(),
            scope: scope.into(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connect")
    }

    fn lease_ttl(&self) -> u64 {
        2
    }

    async fn let_leases_expire(&self, _store: &EtcdDcs) {
        // Real time passes while the suite polls (up to `deadline`).
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(20)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(3, dir.path()).await.unwrap();
    assert_conformance(&Etcd {
        endpoints: cluster.endpoints(),
    })
    .await;
}
