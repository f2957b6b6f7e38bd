//! The controllers integration tests, one binary: each module is one area, and they share the harness in `common`.

mod autoscaling;
mod certificates;
mod common;
mod cronjobs;
mod daemonsets;
mod deployments;
mod disruption;
mod endpoints;
mod gc;
mod jobs;
mod leader;
mod nodeipam;
mod nodes;
mod quotas;
mod replicationcontrollers;
mod scheduling;
mod serviceaccounts;
mod servicelb;
mod statefulsets;
mod volumes;
