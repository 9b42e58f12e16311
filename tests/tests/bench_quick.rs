//! The benchmark harness runs end to end with tiny maps and prints well-formed tables and a
//! page with plots. It checks the shape of the output, never the timings.

use std::{fs, process::Command};

use enforcer_tests::require_root;

const VARIANT_HEADER: &str = "| group | variant | ns/packet | min | max | over floor | over floor min | over floor max | verdict |";
const FIGURE_HEADER: &str = "| figure | target | measured | met |";

/// Returns the rows of the markdown table whose header line is `header`, as cells.
fn table_rows(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|line| *line != header);
    assert_eq!(
        lines.next(),
        Some(header),
        "table header {header:?} is missing"
    );
    let separator = lines.next().expect("table has a separator line");
    assert!(
        separator.starts_with("| --- |"),
        "bad separator {separator:?}"
    );
    lines
        .take_while(|line| line.starts_with("| "))
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

fn is_number_or_dash(cell: &str) -> bool {
    cell == "-" || cell.parse::<f64>().is_ok_and(f64::is_finite)
}

#[test]
fn bench_quick_writes_tables() {
    require_root();
    let folder = std::env::temp_dir().join(format!("enforcer-bench-quick-{}", std::process::id()));
    let page = folder.join("benchmarks.md");
    let output = Command::new(env!("CARGO_BIN_EXE_enforcer-bench"))
        .args([
            "--quick",
            "--rounds",
            "5",
            "--repeat",
            "1000",
            "--sessions",
            "64,256",
            "--prefixes",
            "10,20",
            "--cold-flows",
            "64",
            "--live-repeat",
            "500",
            "--command",
            "bench quick test",
            "--page",
        ])
        .arg(&page)
        .output()
        .expect("enforcer-bench starts");
    assert!(
        output.status.success(),
        "enforcer-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");

    let variants = table_rows(&stdout, VARIANT_HEADER);
    // 4 floors, the clock probe, 3 parse-only shapes, hot and cold hits for 4 fixtures, 11 more
    // verdict cases, 4 punt-storm variants and 5 live-frames variants.
    assert_eq!(
        variants.len(),
        4 + 1 + 3 + 8 + 11 + 4 + 5,
        "variant rows:\n{stdout}"
    );
    for row in &variants {
        assert_eq!(row.len(), 9, "variant row {row:?}");
        for cell in &row[2..8] {
            assert!(is_number_or_dash(cell), "cell {cell:?} of row {row:?}");
        }
        assert!(
            row[8] == "ok" || row[8].starts_with("wrong: "),
            "verdict of row {row:?}"
        );
    }

    let figures = table_rows(&stdout, FIGURE_HEADER);
    assert!(!figures.is_empty(), "no figure rows:\n{stdout}");
    for row in &figures {
        assert_eq!(row.len(), 4, "figure row {row:?}");
        assert!(
            ["yes", "no", "not measured"].contains(&row[3].as_str()),
            "met column of row {row:?}"
        );
    }

    let sign_ins = table_rows(&stdout, "| sign-ins | median | min | max |");
    assert_eq!(sign_ins.len(), 1, "sign-in rows:\n{stdout}");
    assert_eq!(
        sign_ins[0][0], "1",
        "one sign-in in a quick run: {:?}",
        sign_ins[0]
    );
    assert!(
        sign_ins[0][1].ends_with(" ms"),
        "median of {:?}",
        sign_ins[0]
    );

    let text = fs::read_to_string(&page).expect("page was written");
    assert!(
        text.contains("## Sign-in to first passing packet"),
        "{text}"
    );
    assert!(text.contains("| command | `bench quick test` |"), "{text}");
    assert!(text.contains("| kernel (`uname -r`) |"), "{text}");
    for plot in ["cases.svg", "scale.svg", "nftables.svg"] {
        let svg = fs::read_to_string(folder.join("benchmarks").join(plot)).expect("plot written");
        assert!(svg.starts_with("<svg "), "{plot} does not start with <svg");
        assert!(svg.trim_end().ends_with("</svg>"), "{plot} is not closed");
    }
    fs::remove_dir_all(&folder).expect("temporary page folder removed");
}
