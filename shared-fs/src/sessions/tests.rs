//! Tests of the `sessions` module.
