//! Crafted packets through the real XDP program with `BPF_PROG_TEST_RUN`.

use enforcer::dataplane::reference::LinkKind;
use enforcer_tests::{datapath::TestProgram, require_root};

#[test]
fn verifier_accepts_both_entry_points() {
    require_root();
    let mut program = TestProgram::load().unwrap();
    for link in [LinkKind::Ethernet, LinkKind::RawIp] {
        let instructions = program.verified_instructions(link).unwrap();
        println!("{link:?}: {instructions} verified instructions");
        assert!(
            instructions < 200_000,
            "{link:?} verified {instructions} instructions"
        );
    }
}
