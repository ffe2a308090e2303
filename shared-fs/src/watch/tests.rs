//! Tests of the `watch` module.
