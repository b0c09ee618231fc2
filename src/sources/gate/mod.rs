//! Entry gate source: a turnstile through a Modbus RTU digital-I/O module (PROTOCOLS.md §3a).

pub mod modbus;
