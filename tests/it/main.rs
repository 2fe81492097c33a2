//! The integration tests: one binary (one link of lookout and tract instead
//! of one per file), a module per area. They drive the built binary against
//! real services: a Mosquitto started on a free loopback port, the bundled
//! models, real image files.
//!
//! `cross` and `soak` are run by name: `cargo test --test it cross::` (from
//! cross/test.sh) and `cargo test --release --test it soak:: -- --ignored`.

mod architecture;
mod badinput;
mod capture;
mod cli;
mod common;
mod cross;
mod custom;
mod e2e;
mod forms;
mod inference;
mod model;
mod mqtt;
mod nspawn;
mod offline;
mod preprocess;
mod soak;
mod system;
mod systemd;
mod triggers;
mod views;
