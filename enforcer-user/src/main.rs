//! The `enforcer` binary: the daemon and its admin CLI.

fn main() -> anyhow::Result<()> {
    let mut dataplane = enforcer::dataplane::Dataplane::load()?;
    println!("loaded; counters: {:?}", dataplane.counters()?);
    Ok(())
}
