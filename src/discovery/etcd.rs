//! Backends from etcd (placeholder until the watch lands).

use super::{Report, Reports};
use crate::config::Scheme;
use crate::config::discovery::EtcdSource;

pub(super) async fn run(_src: EtcdSource, _scheme: Scheme, tx: Reports) {
    let _ = tx
        .send(Report::Failed("etcd discovery is not built yet".into()))
        .await;
    tx.closed().await;
}
