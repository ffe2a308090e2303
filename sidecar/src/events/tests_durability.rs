//! Durability tests.
