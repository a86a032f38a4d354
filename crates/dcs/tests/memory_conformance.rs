//! The conformance suite against the in-memory store.

use std::time::Duration;

use pgwarden_dcs::conformance::{assert_conformance, Harness};
use pgwarden_dcs::MemoryDcs;

struct Memory {
    store: MemoryDcs,
}

#[async_trait::async_trait]
impl Harness for Memory {
    type Store = MemoryDcs;

    async fn open(&self, scope: &str) -> MemoryDcs {
        self.store.for_scope("/service", scope)
    }

    fn lease_ttl(&self) -> u64 {
        10
    }

    async fn let_leases_expire(&self, store: &MemoryDcs) {
        store.advance(Duration::from_secs(self.lease_ttl() + 1));
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(5)
    }
}

#[tokio::test]
async fn memory_store_conforms() {
    assert_conformance(&Memory {
        store: MemoryDcs::new("unused"),
    })
    .await;
}
