//! enforcer: a gateway that requires periodic re-authentication per (device, resource),
//! enforced per packet by an XDP program.
//!
//! # Layout
//! - `config`: the daemon's configuration file. Its `[idp]` table is an opaque `toml::Table`
//!   that the `idp` module reads into its own struct.
//! - `policy`: the policy file (resources, who may reach them, pre-enrolled devices), its
//!   validation with line numbers, and its compilation into the kernel's prefix rules.
//! - `store`: the redb state store with a typed API. Pending logins of the authorization code
//!   flow live in `store/logins.rs` (`Store::put_pending_login`, and the single-use
//!   `Store::take_pending_login`). The IdP client and the portal use that API and add fields
//!   to `PendingLogin` there.
//! - `clock`: wall time, CLOCK_BOOTTIME and the boot id, and the expiry conversion.
//! - `engine`: the session engine, the only writer of the kernel maps: reconciliation,
//!   sign-in, grants, revocation and policy reload.
//! - `dataplane`: loads, attaches and pins the XDP program and reads and writes its maps.
//!   It is the only module that touches the kernel.
//! - `idp`: OpenID Connect sign-in (discovery, code flow with PKCE, device grant, ID token
//!   validation). Its pending sign-ins live in the store.
//! - `portal`: the HTTP sign-in portal (HTML for browsers, text for curl).
//! - `responder`: the reauth responder: one pending prompt per device from the kernel's
//!   punts, notified through the portal, a webhook and a server-sent event stream.
//! - `daemon`: `enforcer run`, which wires everything together and owns shutdown.
//! - `cli`: the `enforcer` command line (clap), a client of the admin API.
//! - `admin`: the admin API on a Unix socket (peer credentials checked) and its client.
//! - `explain`: classifies a packet over the current map contents for `enforcer explain`.
//! - `metrics`: the Prometheus exposition of counters, sessions and map use.
//! - `http`: the portal and metrics listeners. The portal merges its routes into
//!   `http::portal_router`, which shares `daemon::DaemonState` with every route.
//!
//! # Where the identity side plugs in
//! - A completed sign-in calls `DaemonState::lock_engine().sign_in(device_id, user, auth)`
//!   from a blocking thread. `auth.at` is the ID token's `auth_time` placed on both clocks
//!   with `clock::instant_at_wall`, so the expiry is converted to CLOCK_BOOTTIME once.
//! - The device of a portal request is `Store::device_by_address` of its source address.
//! - The IdP client reports reachability in `DaemonState::idp`, which `enforcer status` and
//!   the `enforcer_idp_up` metric show.
//! - The reauth responder takes the punt reader from `DaemonState::punts` once.
pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod engine;
pub mod explain;
pub mod http;
pub mod idp;
pub mod metrics;
pub mod policy;
pub mod portal;
pub mod responder;
pub mod secret_file;
pub mod store;
