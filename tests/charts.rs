//! The `charts` sheet of results.xlsx, end to end: real runs through neroman print metrics, and a
//! real LibreOffice opens the workbook and keeps its charts when it converts it.

mod common;
use common::{Project, V};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A job printing three steps of `loss` and `acc` (scaled by its parameter `k`), then a NaN loss.
const JOB: &str = r#"
import sys
k = float(sys.argv[1])
for s in (10, 20, 40):
    print(f"step={s} loss={k / s:.4f} acc={1 - k / (s + 1):.4f}", flush=True)
print("step=50 loss=nan", flush=True)
"#;

/// The text of each part of a zip file, by name (binary parts are left empty).
fn zip_parts(path: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            (f.name().unwrap().to_string(), s)
        })
        .collect()
}

/// Series per chart part, in part order: `<c:ser>` in xlsx charts, `<chart:series` in ods ones.
fn series_per_chart(parts: &BTreeMap<String, String>, ods: bool) -> Vec<usize> {
    parts
        .iter()
        .filter(|(name, text)| {
            if ods {
                name.ends_with("/content.xml") && text.contains("<chart:chart")
            } else {
                name.starts_with("xl/charts/chart") && name.ends_with(".xml")
            }
        })
        .map(|(_, text)| {
            text.matches(if ods { "<chart:series " } else { "<c:ser>" })
                .count()
        })
        .collect()
}

/// Three experiments with `loss` and `acc` by step: results.xlsx has a chart per metric (`step`
/// is their x axis, not a chart) with a line per experiment, and LibreOffice opens it without
/// complaint, shows the charts sheet, and keeps both charts and all their lines when it
/// converts the workbook to .xlsx and to .ods.
#[test]
fn charts_sheet_has_a_chart_per_metric_and_survives_libreoffice() {
    let p = Project::new("charts", "command: python3 job.py {k}\n");
    p.write("job.py", JOB);
    p.workbook(
        &["id", "status", "k"],
        &[
            vec![V::N(1.0), V::E, V::N(1.0)],
            vec![V::N(2.0), V::E, V::N(2.0)],
            vec![V::N(3.0), V::E, V::N(3.0)],
        ],
    );
    p.ok(&["start", "all", "--wait"]);
    let book = p.path("results.xlsx");

    let parts = zip_parts(&book);
    let wb = &parts["xl/workbook.xml"];
    assert!(
        wb.contains(r#"<sheet name="charts" sheetId="4""#)
            && wb.contains(r#"<sheet name="chart data" sheetId="5" state="hidden""#),
        "{wb}"
    );
    // acc then loss (by name), three lines each.
    assert_eq!(
        series_per_chart(&parts, false),
        [3, 3],
        "{:?}",
        parts.keys()
    );
    assert!(parts["xl/charts/chart1.xml"].contains("<c:scatterChart>"));
    assert!(parts["xl/charts/chart2.xml"].contains("<a:t>loss</a:t>"));

    // LibreOffice reads the charts sheet (index 3) and the hidden data behind it (index 4).
    let charts = common::soffice_csv(&book, 3);
    let lines: Vec<&str> = charts.lines().collect();
    assert!(lines[0].starts_with("\"One chart per metric"), "{charts}");
    assert_eq!(lines[2], "acc", "{charts}");
    let data = common::soffice_csv(&book, 4);
    let rows: Vec<&str> = data.lines().collect();
    // The loss of experiment 3 at steps 10, 20, 40; the NaN at step 50 is not there.
    assert_eq!(
        rows,
        [
            "acc: step,1,acc: step,2,acc: step,3,loss: step,1,loss: step,2,loss: step,3",
            "10,0.9091,10,0.8182,10,0.7273,10,0.1,10,0.2,10,0.3",
            "20,0.9524,20,0.9048,20,0.8571,20,0.05,20,0.1,20,0.15",
            "40,0.9756,40,0.9512,40,0.9268,40,0.025,40,0.05,40,0.075",
        ],
        "{data}"
    );

    // Converted by LibreOffice, the charts are still there with every line.
    for (format, ods) in [("xlsx", false), ("ods", true)] {
        let out = p.path(&format!("converted-{format}"));
        std::fs::create_dir_all(&out).unwrap();
        let stderr = common::soffice_convert(&book, format, &out, &out.join("profile"));
        let converted = out.join(format!("results.{format}"));
        assert!(converted.is_file(), "{format}: {stderr}");
        let mut got = series_per_chart(&zip_parts(&converted), ods);
        got.sort();
        assert_eq!(got, [3, 3], "{format}: {stderr}");
    }
}
