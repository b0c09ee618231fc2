//! Skin analyzer source: the SKN1 line protocol over serial (PROTOCOLS.md §4).

pub mod skn1;
