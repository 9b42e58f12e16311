//! `enforcer idp check`: runs discovery against the configured identity provider and prints
//! the configured and the discovered issuer, the endpoints and every problem found.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use super::Output;
use crate::{
    config::Config,
    idp::{CheckReport, IdentityProvider, IdpConfig},
};

/// Runs the check; exits with 1 when a problem was found.
pub fn check(config_path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    if config.idp.is_empty() {
        anyhow::bail!(
            "{} has no [idp] section; add issuer, client_id, client_secret_file and redirect_url",
            config_path.display()
        );
    }
    let idp: IdpConfig = toml::Value::Table(config.idp.clone())
        .try_into()
        .with_context(|| format!("invalid [idp] section in {}", config_path.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    let report = runtime.block_on(IdentityProvider::check(&idp));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => print!("{}", human(&report)),
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn human(report: &CheckReport) -> String {
    let missing = || "-".to_owned();
    let mut text = format!(
        "configured issuer:  {}\ndiscovered issuer:  {}\nauthorization:      {}\ntoken:              {}\ndevice:             {}\nsigning algorithms: {}\nsigning keys:       {}\n",
        report.configured_issuer,
        report.discovered_issuer.clone().unwrap_or_else(missing),
        report
            .authorization_endpoint
            .clone()
            .unwrap_or_else(missing),
        report.token_endpoint.clone().unwrap_or_else(missing),
        report
            .device_authorization_endpoint
            .clone()
            .unwrap_or_else(|| "- (no device authorization grant)".to_owned()),
        report.signing_algorithms.join(", "),
        report.keys,
    );
    if report.problems.is_empty() {
        text.push_str("ok: no problems found\n");
    } else {
        for problem in &report.problems {
            text.push_str(&format!("problem: {problem}\n"));
        }
    }
    text
}
