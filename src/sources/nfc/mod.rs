//! NFC reader source: NXP PN532 over HSU (PROTOCOLS.md §2).

pub mod pn532;
