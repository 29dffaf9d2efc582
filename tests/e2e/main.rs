//! End-to-end tests against a real kube-apiserver, etcd and kube-controller-manager.
//! One test binary (faster to link than one per file); each module is one area.

mod fixtures;
mod harness;
mod receiver;

mod catalog;
mod chart;
mod control_plane;
mod evidence;
mod hostile;
mod isolation;
mod metric_policy;
mod operations;
mod operator;
mod prometheus;
mod report;
mod security_metric;
