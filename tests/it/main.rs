//! The integration suite (one binary): real `redis-server` instances started on free
//! loopback ports, real Parquet files read back.

mod support;

mod alerts;
mod analyst;
mod archive;
mod archive_replay;
mod cli;
mod cluster;
mod consumer_group;
mod dashboard;
mod delta;
mod dlq;
mod faults;
mod golden;
mod hostile;
mod http;
mod live_shards;
mod merge;
mod metrics;
mod partition;
mod pipelines_e2e;
mod restart;
mod s3;
mod session_property;
mod shards;
mod storage_faults;
mod tls;
mod traces;
mod window_property;
mod wire;
