//! Command-line tools beyond `run`: token and card-hash helpers.

pub mod token;
