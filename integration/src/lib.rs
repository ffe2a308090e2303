//! Test harness for multi-node ha-sidecar tests.
