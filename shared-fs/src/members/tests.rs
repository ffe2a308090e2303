//! Tests of the `members` module.
